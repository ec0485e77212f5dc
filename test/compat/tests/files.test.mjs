// sandbox.files: write (string and bytes), read, readText, downloadDir.

import { test, before, after } from "node:test"
import assert from "node:assert/strict"
import { Sandbox, NotFoundError, ValidationError } from "@superserve/sdk"
import { MINIMAL, SLOW, uniqueName, unzip, rejectsWith } from "../lib/helpers.mjs"

let sandbox
before(async () => {
  sandbox = await Sandbox.create({ name: uniqueName("files"), fromTemplate: MINIMAL })
}, SLOW)
after(async () => {
  await sandbox?.kill()
})

test("write a string, readText it back, and see it from a command", SLOW, async () => {
  const text = '{"key": "value", "ünï": "cödé ✓"}\n'
  await sandbox.files.write("/tmp/config.json", text)
  assert.equal(await sandbox.files.readText("/tmp/config.json"), text)
  const r = await sandbox.commands.run("cat /tmp/config.json")
  assert.equal(r.stdout, text)
})

test("write bytes (Uint8Array and ArrayBuffer), read returns them exactly", SLOW, async () => {
  const bytes = new Uint8Array(256 * 4)
  for (let i = 0; i < bytes.length; i++) bytes[i] = i % 256
  await sandbox.files.write("/tmp/binary.dat", bytes)
  const got = await sandbox.files.read("/tmp/binary.dat")
  assert.ok(got instanceof Uint8Array)
  assert.deepEqual(Buffer.from(got), Buffer.from(bytes))

  await sandbox.files.write("/tmp/from-arraybuffer.dat", bytes.buffer)
  assert.deepEqual(Buffer.from(await sandbox.files.read("/tmp/from-arraybuffer.dat")), Buffer.from(bytes))

  const r = await sandbox.commands.run("wc -c < /tmp/binary.dat")
  assert.equal(r.stdout.trim(), "1024")
})

test("write creates parent directories and overwrites", SLOW, async () => {
  await sandbox.files.write("/tmp/deep/a/b/c.txt", "first version, longer")
  await sandbox.files.write("/tmp/deep/a/b/c.txt", "second")
  assert.equal(await sandbox.files.readText("/tmp/deep/a/b/c.txt"), "second")
})

test("an empty file and a 5 MiB file", SLOW, async () => {
  await sandbox.files.write("/tmp/empty", "")
  assert.equal((await sandbox.files.read("/tmp/empty")).byteLength, 0)

  const big = new Uint8Array(5 << 20)
  for (let i = 0; i < big.length; i += 4096) big[i] = (i / 4096) & 0xff
  await sandbox.files.write("/tmp/big.bin", big)
  const got = await sandbox.files.read("/tmp/big.bin")
  assert.equal(got.byteLength, big.byteLength)
  assert.ok(Buffer.from(got).equals(Buffer.from(big)))
})

test("reading a file that does not exist is a NotFoundError", SLOW, async () => {
  await rejectsWith(() => sandbox.files.read("/tmp/no/such/file"), NotFoundError, "read of a missing file")
})

test("downloadDir returns a zip whose entries start with the directory's base name", SLOW, async () => {
  await sandbox.files.write("/tmp/out/result.txt", "result\n")
  await sandbox.files.write("/tmp/out/sub/data.bin", new Uint8Array([0, 1, 2, 255]))
  await sandbox.files.write("/tmp/out/sub/deeper/note.md", "# note\n".repeat(1000))
  await sandbox.commands.run("ln -s result.txt /tmp/out/link && mkdir -p /tmp/out/empty")

  const zip = await sandbox.files.downloadDir("/tmp/out")
  assert.ok(zip instanceof Uint8Array)
  const entries = unzip(zip)
  const files = new Map([...entries].filter(([, e]) => !e.dir).map(([name, e]) => [name, e.data]))

  assert.deepEqual([...files.keys()].sort(), ["out/result.txt", "out/sub/data.bin", "out/sub/deeper/note.md"])
  assert.equal(files.get("out/result.txt").toString(), "result\n")
  assert.deepEqual([...files.get("out/sub/data.bin")], [0, 1, 2, 255])
  assert.equal(files.get("out/sub/deeper/note.md").toString(), "# note\n".repeat(1000))
  for (const name of entries.keys()) {
    assert.ok(name === "out/" || name.startsWith("out/"), `entry ${name} starts with the base name`)
    assert.notEqual(name, "out/link", "symlinks are skipped")
  }
})

test("downloadDir of a regular file returns the file's bytes as-is, not zipped", SLOW, async () => {
  // The SDK's documentation of downloadDir: "The server decides
  // file-vs-directory: if `path` points at a regular file, its bytes are
  // streamed back as-is (not zipped)".
  await sandbox.files.write("/tmp/single.txt", "just the bytes\n")
  const got = Buffer.from(await sandbox.files.downloadDir("/tmp/single.txt"))
  assert.ok(!got.subarray(0, 4).equals(Buffer.from("PK\x03\x04", "latin1")), "stasisd answered with a zip archive of the file")
  assert.equal(got.toString(), "just the bytes\n")
})

test("paths must be absolute and free of '..' (ValidationError)", SLOW, async () => {
  // The SDK checks these itself, before any request.
  await rejectsWith(() => sandbox.files.read("relative.txt"), ValidationError, "read of a relative path")
  await rejectsWith(() => sandbox.files.write("/tmp/../etc/x", "x"), ValidationError, "write with ..")
  await rejectsWith(() => sandbox.files.downloadDir("tmp"), ValidationError, "downloadDir of a relative path")
})

test("a path the SDK lets through but the server refuses is a ValidationError", SLOW, async () => {
  // Writing to a directory path, and a NUL byte in a path: the SDK sends both.
  await rejectsWith(() => sandbox.files.write("/tmp/", "x"), ValidationError, "write to /tmp/")
  await rejectsWith(() => sandbox.files.read("/tmp/a\u0000b"), ValidationError, "read of a path with NUL")
})
