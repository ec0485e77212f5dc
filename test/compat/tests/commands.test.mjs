// sandbox.commands: run (buffered POST /exec, streamed POST /exec/stream) and
// spawn (WebSocket /exec/connect).

import { describe, test, before, after } from "node:test"
import assert from "node:assert/strict"
import { Sandbox } from "@superserve/sdk"
import { MINIMAL, SLOW, uniqueName, eventually } from "../lib/helpers.mjs"

// One sandbox serves every command test of this file.
let sandbox
before(async () => {
  sandbox = await Sandbox.create({ name: uniqueName("commands"), fromTemplate: MINIMAL })
}, SLOW)
after(async () => {
  await sandbox?.kill()
})

describe("commands.run (buffered)", () => {
  test("returns stdout, stderr and the exit code", SLOW, async () => {
    const r = await sandbox.commands.run("echo hello; echo oops >&2; exit 3")
    assert.deepEqual(r, { stdout: "hello\n", stderr: "oops\n", exitCode: 3 })
  })

  test("exit code 0 and UTF-8 output", SLOW, async () => {
    const r = await sandbox.commands.run("printf 'h\\303\\251llo \\342\\234\\223\\n'")
    assert.deepEqual(r, { stdout: "héllo ✓\n", stderr: "", exitCode: 0 })
  })

  test("cwd", SLOW, async () => {
    const r = await sandbox.commands.run("pwd", { cwd: "/tmp" })
    assert.equal(r.stdout, "/tmp\n")
    assert.equal(r.exitCode, 0)
  })

  test("env", SLOW, async () => {
    const r = await sandbox.commands.run('echo "$GREETING/$OTHER"', { env: { GREETING: "hi there", OTHER: "x=y" } })
    assert.equal(r.stdout, "hi there/x=y\n")
  })

  test("timeoutMs stops a command that runs too long", SLOW, async () => {
    const start = Date.now()
    const r = await sandbox.commands.run("echo started; sleep 60; echo never", { timeoutMs: 2000 })
    const took = Date.now() - start
    assert.ok(took < 15_000, `run returned after ${took}ms`)
    assert.notEqual(r.exitCode, 0, "a timed-out command does not exit 0")
    assert.equal(r.stdout, "started\n")
  })

  test("large output arrives whole", SLOW, async () => {
    const r = await sandbox.commands.run("i=0; while [ $i -lt 20000 ]; do echo line-$i; i=$((i+1)); done")
    const lines = r.stdout.split("\n")
    assert.equal(lines.length, 20001)
    assert.equal(lines[19999], "line-19999")
  })
})

describe("commands.run (streamed: onStdout / onStderr)", () => {
  test("callbacks see the output, and the result carries it too", SLOW, async () => {
    const out = []
    const err = []
    const r = await sandbox.commands.run("for i in 1 2 3; do echo out$i; echo err$i >&2; sleep 0.1; done; exit 4", {
      onStdout: (d) => out.push(d),
      onStderr: (d) => err.push(d),
    })
    assert.equal(out.join(""), "out1\nout2\nout3\n")
    assert.equal(err.join(""), "err1\nerr2\nerr3\n")
    assert.deepEqual(r, { stdout: "out1\nout2\nout3\n", stderr: "err1\nerr2\nerr3\n", exitCode: 4 })
  })

  test("output is delivered while the command still runs", SLOW, async () => {
    let firstAt
    const start = Date.now()
    const r = await sandbox.commands.run("echo first; sleep 2; echo second", {
      onStdout: () => {
        firstAt ??= Date.now()
      },
    })
    const doneAt = Date.now()
    assert.equal(r.stdout, "first\nsecond\n")
    assert.ok(firstAt !== undefined, "onStdout was called")
    assert.ok(doneAt - firstAt >= 1500, `first chunk came ${firstAt - start}ms after start, the result ${doneAt - start}ms`)
  })

  test("only onStderr given: still streamed", SLOW, async () => {
    const err = []
    const r = await sandbox.commands.run("echo to-out; echo to-err >&2", { onStderr: (d) => err.push(d) })
    assert.equal(err.join(""), "to-err\n")
    assert.deepEqual(r, { stdout: "to-out\n", stderr: "to-err\n", exitCode: 0 })
  })

  test("cwd, env and timeoutMs", SLOW, async () => {
    const out = []
    const r = await sandbox.commands.run('pwd; echo "$X"', {
      cwd: "/etc",
      env: { X: "streamed-env" },
      onStdout: (d) => out.push(d),
    })
    assert.equal(out.join(""), "/etc\nstreamed-env\n")
    assert.equal(r.exitCode, 0)

    const start = Date.now()
    const t = await sandbox.commands.run("echo tick; sleep 60", { timeoutMs: 2000, onStdout: () => {} })
    assert.ok(Date.now() - start < 15_000, `streamed run returned after ${Date.now() - start}ms`)
    assert.notEqual(t.exitCode, 0)
    assert.equal(t.stdout, "tick\n")
  })
})

describe("commands.spawn (WebSocket)", () => {
  test("stdin: write, see the echo live, close, wait", SLOW, async () => {
    let seen = ""
    const session = await sandbox.commands.spawn("cat; echo done >&2", {
      onStdout: (d) => {
        seen += d
      },
    })
    session.stdin.write("hello\n")
    await eventually(() => seen.includes("hello\n"), { what: "cat to echo the first line before stdin is closed" })
    session.stdin.write(new TextEncoder().encode("world\n"))
    session.stdin.close()
    const r = await session.wait()
    assert.deepEqual(r, { stdout: "hello\nworld\n", stderr: "done\n", exitCode: 0 })
  })

  test("stdin larger than one frame (the SDK chunks at 32 KiB)", SLOW, async () => {
    const session = await sandbox.commands.spawn("wc -c")
    session.stdin.write("x".repeat(100_000))
    session.stdin.close()
    const r = await session.wait()
    assert.equal(r.stdout.trim(), "100000")
    assert.equal(r.exitCode, 0)
  })

  test("kill() sends SIGTERM to the command", SLOW, async () => {
    let seen = ""
    const session = await sandbox.commands.spawn("trap 'echo got-term; exit 7' TERM; echo ready; while :; do sleep 0.1; done", {
      onStdout: (d) => {
        seen += d
      },
    })
    await eventually(() => seen.includes("ready"), { what: "the command to start" })
    session.kill()
    const r = await session.wait()
    assert.equal(r.stdout, "ready\ngot-term\n")
    assert.equal(r.exitCode, 7)
  })

  test("kill(\"SIGKILL\")", SLOW, async () => {
    let seen = ""
    const session = await sandbox.commands.spawn("echo ready; sleep 60", {
      onStdout: (d) => {
        seen += d
      },
    })
    await eventually(() => seen.includes("ready"), { what: "the command to start" })
    const start = Date.now()
    session.kill("SIGKILL")
    const r = await session.wait()
    assert.ok(Date.now() - start < 10_000)
    assert.equal(r.exitCode, 137)
  })

  test("cwd, env, timeoutMs and stderr", SLOW, async () => {
    const err = []
    const session = await sandbox.commands.spawn('pwd; echo "$V" >&2', {
      cwd: "/tmp",
      env: { V: "spawned" },
      onStderr: (d) => err.push(d),
    })
    const r = await session.wait()
    assert.deepEqual(r, { stdout: "/tmp\n", stderr: "spawned\n", exitCode: 0 })
    assert.equal(err.join(""), "spawned\n")

    const start = Date.now()
    const slow = await sandbox.commands.spawn("sleep 60", { timeoutMs: 2000 })
    const t = await slow.wait()
    assert.ok(Date.now() - start < 15_000, `timed-out session ended after ${Date.now() - start}ms`)
    assert.notEqual(t.exitCode, 0)
  })

  test("close() ends a running session", SLOW, async () => {
    const session = await sandbox.commands.spawn("sleep 60")
    const start = Date.now()
    await session.close()
    assert.ok(Date.now() - start < 10_000)
    // The process is gone: nothing named sleep 60 is left running.
    await eventually(async () => !(await sandbox.commands.run("ps")).stdout.includes("sleep 60"), {
      what: "the closed session's process to exit",
    })
  })
})
