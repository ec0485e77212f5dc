import { test } from "node:test"
import assert from "node:assert/strict"
import { Sandbox, SandboxNotFoundError, AuthenticationError } from "e2b"
import { newSandbox, eventually } from "../lib/helpers.mjs"

test("Sandbox.create, sandbox.isRunning, sandbox.getInfo, Sandbox.getInfo, sandbox.kill, Sandbox.kill", async () => {
  const sbx = await newSandbox({ metadata: { suite: "lifecycle" } })
  assert.equal(await sbx.isRunning(), true)
  const info = await sbx.getInfo()
  assert.equal(info.sandboxId, sbx.sandboxId)
  assert.equal(info.templateId, "base")
  assert.equal(info.state, "running")
  assert.deepEqual(info.metadata, { suite: "lifecycle" })
  assert.equal((await Sandbox.getInfo(sbx.sandboxId)).sandboxId, sbx.sandboxId)
  assert.equal(await sbx.kill(), true)
  assert.equal(await sbx.isRunning(), false)
  assert.equal(await Sandbox.kill(sbx.sandboxId), false)
  await assert.rejects(Sandbox.getInfo(sbx.sandboxId), SandboxNotFoundError)
})

test("Sandbox.list: metadata and state filters, paging", async () => {
  const tag = "list-" + Date.now()
  const a = await newSandbox({ metadata: { tag, "a b": "c&d" } })
  const b = await newSandbox({ metadata: { tag } })
  const found = await Sandbox.list({ query: { metadata: { tag, "a b": "c&d" }, state: ["running"] } }).nextItems()
  assert.deepEqual(found.map((s) => s.sandboxId), [a.sandboxId])
  const pager = Sandbox.list({ query: { metadata: { tag } }, limit: 1 })
  const first = await pager.nextItems()
  assert.equal(pager.hasNext, true)
  const second = await pager.nextItems()
  assert.deepEqual([...first, ...second].map((s) => s.sandboxId).sort(), [a.sandboxId, b.sandboxId].sort())
  assert.equal(pager.hasNext, false)
})

test("sandbox.setTimeout, Sandbox.setTimeout, sandbox.pause, Sandbox.pause, sandbox.connect: a paused sandbox keeps its state", async () => {
  const sbx = await newSandbox()
  await sbx.setTimeout(600_000)
  const before = await sbx.getInfo()
  assert.ok(before.endAt.getTime() - Date.now() > 500_000)
  await Sandbox.setTimeout(sbx.sandboxId, 700_000)
  assert.ok((await sbx.getInfo()).endAt.getTime() - Date.now() > 600_000)
  await sbx.commands.run("echo kept > /tmp/state")
  assert.equal(await sbx.pause(), true)
  assert.equal(await Sandbox.pause(sbx.sandboxId), false) // already paused: 409
  assert.equal((await sbx.getInfo()).state, "paused")
  const same = await sbx.connect()
  assert.equal((await same.getInfo()).state, "running")
  assert.equal((await same.commands.run("cat /tmp/state")).stdout, "kept\n")
})

test("sandbox.betaPause, Sandbox.betaPause, Sandbox.connect resumes a paused sandbox; unknown ids throw SandboxNotFoundError", async () => {
  const sbx = await newSandbox()
  assert.equal(await sbx.betaPause(), true)
  assert.equal(await Sandbox.betaPause(sbx.sandboxId), false)
  const again = await Sandbox.connect(sbx.sandboxId)
  assert.equal((await again.commands.run("echo resumed")).stdout, "resumed\n")
  await assert.rejects(Sandbox.connect("nosuchsandbox"), SandboxNotFoundError)
})

test("Sandbox.create with lifecycle onTimeout pause: the timeout pauses, Sandbox.connect resumes", async () => {
  const sbx = await newSandbox({ timeoutMs: 1000, lifecycle: { onTimeout: "pause" } })
  await eventually(async () => (await sbx.getInfo()).state === "paused", 60_000)
  assert.equal((await sbx.getInfo()).lifecycle?.onTimeout, "pause")
  const again = await Sandbox.connect(sbx.sandboxId, { timeoutMs: 60_000 })
  assert.equal((await again.commands.run("echo up")).stdout, "up\n")
})

test("Sandbox.create without autoPause: the timeout kills the sandbox", async () => {
  const sbx = await newSandbox({ timeoutMs: 1000 })
  assert.equal((await sbx.getInfo()).lifecycle?.onTimeout, "kill")
  await eventually(async () => !(await Sandbox.list().nextItems()).some((s) => s.sandboxId === sbx.sandboxId), 60_000)
  assert.equal(await sbx.isRunning(), false)
})

test("sandbox.getMetrics, Sandbox.getMetrics", async () => {
  const sbx = await newSandbox()
  const [m] = await sbx.getMetrics()
  assert.ok(m.cpuCount >= 1 && m.memTotal > 0 && m.memUsed > 0 && m.diskTotal > 0, JSON.stringify(m))
  assert.equal((await Sandbox.getMetrics(sbx.sandboxId)).length, 1)
})

test("sandbox.createSnapshot, Sandbox.createSnapshot, sandbox.listSnapshots, Sandbox.listSnapshots, Sandbox.deleteSnapshot, Sandbox.create from a snapshot", async () => {
  const sbx = await newSandbox()
  await sbx.files.write("/home/user/snap.txt", "from snapshot")
  const snap = await sbx.createSnapshot({ name: "e2b-compat" })
  assert.ok(snap.snapshotId)
  const listed = await sbx.listSnapshots().nextItems()
  assert.ok(listed.some((s) => s.snapshotId === snap.snapshotId))
  const all = await Sandbox.listSnapshots().nextItems()
  assert.ok(all.some((s) => s.snapshotId === snap.snapshotId))
  const child = await Sandbox.create(snap.snapshotId)
  try {
    assert.equal(await child.files.read("/home/user/snap.txt"), "from snapshot")
  } finally {
    await child.kill()
  }
  const snap2 = await Sandbox.createSnapshot(sbx.sandboxId)
  assert.equal(await Sandbox.deleteSnapshot(snap.snapshotId), true)
  assert.equal(await Sandbox.deleteSnapshot(snap2.snapshotId), true)
  assert.equal(await Sandbox.deleteSnapshot(snap.snapshotId), false)
})

test("sandbox.fork, Sandbox.fork", async () => {
  const sbx = await newSandbox()
  await sbx.files.write("/home/user/fork.txt", "shared")
  const [fork] = await sbx.fork()
  try {
    assert.ok(!(fork instanceof Error), String(fork))
    assert.notEqual(fork.sandboxId, sbx.sandboxId)
    assert.equal(await fork.files.read("/home/user/fork.txt"), "shared")
    assert.equal((await sbx.commands.run("echo source")).stdout, "source\n")
    const forks = await Sandbox.fork(sbx.sandboxId, { count: 1 })
    assert.equal(forks.length, 1)
    await Promise.all(forks.map((f) => f.kill()))
  } finally {
    await fork.kill()
  }
})

test("errors: a wrong API key throws AuthenticationError; unknown template is 404", async () => {
  await assert.rejects(Sandbox.list({ apiKey: "wrong" }).nextItems(), AuthenticationError)
  await assert.rejects(Sandbox.create("no-such-template"), /404/)
})
