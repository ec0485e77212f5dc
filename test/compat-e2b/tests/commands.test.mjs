import { test } from "node:test"
import assert from "node:assert/strict"
import { CommandExitError, Sandbox } from "e2b"
import { newSandbox, eventually } from "../lib/helpers.mjs"

const sbx = await newSandbox({ envs: { GREETING: "hello" } })

test("sandbox.commands.run: buffered stdout, stderr, envs, cwd, user", async () => {
  const r = await sbx.commands.run("echo out; echo err >&2; echo $GREETING $EXTRA; whoami; pwd", { envs: { EXTRA: "x" } })
  assert.equal(r.exitCode, 0)
  assert.equal(r.stdout, "out\nhello x\nuser\n/home/user\n")
  assert.equal(r.stderr, "err\n")
  const root = await sbx.commands.run("whoami; pwd", { user: "root", cwd: "/tmp" })
  assert.equal(root.stdout, "root\n/tmp\n")
})

test("sandbox.commands.run: a non-zero exit throws CommandExitError", async () => {
  await assert.rejects(sbx.commands.run("echo bad >&2; exit 7"), (e) => {
    assert.ok(e instanceof CommandExitError)
    assert.equal(e.exitCode, 7)
    assert.equal(e.stderr, "bad\n")
    return true
  })
})

test("sandbox.commands.run: streamed output with onStdout/onStderr", async () => {
  const out = []
  const err = []
  await sbx.commands.run("for i in 1 2 3; do echo $i; sleep 0.1; done; echo e >&2", {
    onStdout: (d) => out.push(d),
    onStderr: (d) => err.push(d),
  })
  assert.equal(out.join(""), "1\n2\n3\n")
  assert.equal(err.join(""), "e\n")
})

test("sandbox.commands.run: timeoutMs ends the command", async () => {
  await assert.rejects(sbx.commands.run("sleep 30", { timeoutMs: 1500 }))
})

test("sandbox.commands.run background, sandbox.commands.list, sandbox.commands.connect, handle.wait, handle.disconnect, sandbox.commands.kill", async () => {
  const h = await sbx.commands.run("i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.2; done", { background: true })
  assert.ok(h.pid > 0)
  await h.disconnect()
  const list = await sbx.commands.list()
  assert.ok(list.some((p) => p.pid === h.pid && p.cmd === "/bin/bash"), JSON.stringify(list))
  const seen = []
  const again = await sbx.commands.connect(h.pid, { onStdout: (d) => seen.push(d) })
  await eventually(() => seen.join("").includes("tick"))
  assert.equal(await sbx.commands.kill(h.pid), true)
  await assert.rejects(again.wait())
  assert.equal(await sbx.commands.kill(h.pid), false)
})

test("sandbox.commands.start, sandbox.commands.sendStdin, sandbox.commands.closeStdin, handle.kill", async () => {
  const h = await sbx.commands.run("cat", { background: true, stdin: true })
  await sbx.commands.sendStdin(h.pid, "line one\n")
  await sbx.commands.closeStdin(h.pid)
  const r = await h.wait()
  assert.equal(r.stdout, "line one\n")
  const h2 = await sbx.commands.run("sleep 60", { background: true })
  assert.equal(await h2.kill(), true)
})

test("sandbox.pty.create, sandbox.pty.connect, sandbox.pty.sendInput, sandbox.pty.resize, sandbox.pty.kill", async () => {
  const chunks = []
  const dec = new TextDecoder()
  const t = await sbx.pty.create({ cols: 80, rows: 24, onData: (d) => chunks.push(dec.decode(d)) })
  await sbx.pty.resize(t.pid, { cols: 100, rows: 30 })
  await sbx.pty.sendInput(t.pid, new TextEncoder().encode("stty size; echo marker-$((6*7))\n"))
  await eventually(() => chunks.join("").includes("marker-42"))
  assert.match(chunks.join(""), /30 100/)
  await t.disconnect()
  const later = []
  await sbx.pty.connect(t.pid, { onData: (d) => later.push(dec.decode(d)) })
  await sbx.pty.sendInput(t.pid, new TextEncoder().encode("echo again-$((2*3))\n"))
  await eventually(() => later.join("").includes("again-6"))
  assert.equal(await sbx.pty.kill(t.pid), true)
})

test("sandbox.commands.run background keeps counting across sandbox.pause and Sandbox.connect; sandbox.commands.connect re-attaches by pid", async () => {
  const h = await sbx.commands.run("i=0; while true; do echo count $i; i=$((i+1)); sleep 0.2; done", { background: true })
  const before = []
  const first = await sbx.commands.connect(h.pid, { onStdout: (d) => before.push(d) })
  await eventually(() => before.join("").includes("count 3"))
  await first.disconnect()
  const last = (chunks) => Math.max(...chunks.join("").match(/count (\d+)/g).map((m) => Number(m.split(" ")[1])))
  const beforePause = last(before)

  assert.equal(await sbx.pause(), true)
  const resumed = await Sandbox.connect(sbx.sandboxId)
  assert.ok((await resumed.commands.list()).some((p) => p.pid === h.pid), "the command is listed after the resume")
  const after = []
  const again = await resumed.commands.connect(h.pid, { onStdout: (d) => after.push(d) })
  // The same loop, not a new one: its count goes on from where it was.
  await eventually(() => after.length > 0 && last(after) >= beforePause + 5)
  assert.ok(!after.join("").includes("count 0\n"), "the count started over: " + after.join("").slice(0, 80))
  assert.equal(await resumed.commands.kill(h.pid), true)
  await assert.rejects(again.wait())
})
