import { test } from "node:test"
import assert from "node:assert/strict"
import { FileNotFoundError, FileType } from "e2b"
import { newSandbox, eventually } from "../lib/helpers.mjs"

const sbx = await newSandbox()

test("sandbox.files.write, sandbox.files.read: text and bytes", async () => {
  const info = await sbx.files.write("/home/user/hello.txt", "hello")
  assert.equal(info.path, "/home/user/hello.txt")
  assert.equal(await sbx.files.read("/home/user/hello.txt"), "hello")
  const bytes = new Uint8Array([0, 1, 2, 255])
  await sbx.files.write("bin.dat", bytes.buffer)
  assert.deepEqual(new Uint8Array(await sbx.files.read("bin.dat", { format: "bytes" })), bytes)
  await sbx.files.write("/home/user/empty", "")
  assert.equal(await sbx.files.read("/home/user/empty"), "")
})

test("sandbox.files.writeFiles: several files in one multipart request", async () => {
  const infos = await sbx.files.writeFiles([
    { path: "/home/user/multi/a.txt", data: "A" },
    { path: "multi/b.txt", data: "B" },
  ])
  assert.deepEqual(infos.map((i) => i.path).sort(), ["/home/user/multi/a.txt", "/home/user/multi/b.txt"])
  assert.equal(await sbx.files.read("/home/user/multi/b.txt"), "B")
})

test("sandbox.files.read of a missing file throws FileNotFoundError", async () => {
  await assert.rejects(sbx.files.read("/home/user/missing"), FileNotFoundError)
})

test("sandbox.files.list, sandbox.files.getInfo, sandbox.files.exists", async () => {
  await sbx.files.write("/home/user/tree/x/y.txt", "y")
  const one = await sbx.files.list("/home/user/tree")
  assert.deepEqual(one.map((e) => [e.name, e.type]), [["x", FileType.DIR]])
  const two = await sbx.files.list("/home/user/tree", { depth: 2 })
  assert.deepEqual(two.map((e) => e.name).sort(), ["x", "y.txt"])
  const info = await sbx.files.getInfo("/home/user/tree/x/y.txt")
  assert.equal(info.type, FileType.FILE)
  assert.equal(info.size, 1)
  assert.equal(info.owner, "user")
  assert.equal(await sbx.files.exists("/home/user/tree/x/y.txt"), true)
  assert.equal(await sbx.files.exists("/home/user/tree/nope"), false)
  await assert.rejects(sbx.files.getInfo("/home/user/tree/nope"), FileNotFoundError)
})

test("sandbox.files.makeDir, sandbox.files.rename, sandbox.files.remove", async () => {
  assert.equal(await sbx.files.makeDir("/home/user/newdir/sub"), true)
  assert.equal(await sbx.files.makeDir("/home/user/newdir/sub"), false)
  await sbx.files.write("/home/user/newdir/f.txt", "f")
  const moved = await sbx.files.rename("/home/user/newdir/f.txt", "/home/user/newdir/g.txt")
  assert.equal(moved.path, "/home/user/newdir/g.txt")
  assert.equal(await sbx.files.read("/home/user/newdir/g.txt"), "f")
  await sbx.files.remove("/home/user/newdir")
  assert.equal(await sbx.files.exists("/home/user/newdir"), false)
})

test("sandbox.files.watchDir: create, write, rename and remove events, recursive", async () => {
  await sbx.files.makeDir("/home/user/watched/sub")
  const seen = []
  const w = await sbx.files.watchDir("/home/user/watched", (e) => seen.push(`${e.type} ${e.name}`), { recursive: true })
  try {
    await sbx.commands.run("cd /home/user/watched && echo a > f.txt && mv f.txt sub/g.txt && rm sub/g.txt")
    await eventually(() => seen.includes("remove sub/g.txt"))
    for (const e of ["create f.txt", "write f.txt", "rename f.txt", "create sub/g.txt"]) assert.ok(seen.includes(e), `${e} in ${seen}`)
  } finally {
    await w.stop()
  }
})
