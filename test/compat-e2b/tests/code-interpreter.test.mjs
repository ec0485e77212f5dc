// @e2b/code-interpreter 2.8.0 against stasis/code-interpreter: the package's
// own Sandbox (template code-interpreter-v1) talking to our server on port
// 49999 through E2B_SANDBOX_URL, routed by E2b-Sandbox-Id/E2b-Sandbox-Port.
import { test, after } from "node:test"
import assert from "node:assert/strict"
import { Sandbox } from "@e2b/code-interpreter"

// One sandbox for the file: the kernel's start is the slow part.
let sbx
const sandbox = async () => (sbx ??= await Sandbox.create({ timeoutMs: 600_000 }))
after(async () => { if (sbx) await Sandbox.kill(sbx.sandboxId) })

test("ci.Sandbox.create, ci.sandbox.runCode: print goes to logs.stdout, the last expression is the main result", async () => {
  const s = await sandbox()
  assert.equal((await s.getInfo()).templateId, "code-interpreter-v1")
  const ex = await s.runCode("print('hello from python')\n1 + 41")
  assert.deepEqual(ex.logs.stdout, ["hello from python\n"])
  assert.deepEqual(ex.logs.stderr, [])
  assert.equal(ex.error, undefined)
  assert.equal(ex.text, "42")
  assert.equal(ex.results.length, 1)
  assert.equal(ex.results[0].isMainResult, true)
  assert.ok(ex.executionCount >= 1, String(ex.executionCount))
})

test("ci.sandbox.runCode: a pandas DataFrame comes back as text, html and data", async () => {
  const s = await sandbox()
  const ex = await s.runCode("import pandas as pd\npd.DataFrame({'a': [1, 2], 'b': ['x', 'y']})")
  assert.equal(ex.error, undefined, JSON.stringify(ex.error))
  const [r] = ex.results
  assert.match(r.text, /a\s+b/)
  assert.match(r.html, /<table/)
  assert.ok(r.formats().includes("html"), r.formats().join(","))
  assert.deepEqual(r.data, { a: [1, 2], b: ["x", "y"] })
})

test("ci.sandbox.runCode: a matplotlib figure comes back as a PNG", async () => {
  const s = await sandbox()
  const ex = await s.runCode(
    "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3], [1, 4, 9])\nplt.title('squares')\nplt.show()",
  )
  assert.equal(ex.error, undefined, JSON.stringify(ex.error))
  const png = ex.results.find((r) => r.png)
  assert.ok(png, "no result with a png: " + JSON.stringify(ex.results.map((r) => r.formats())))
  assert.deepEqual([...Buffer.from(png.png, "base64").subarray(0, 8)], [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a])
})

test("ci.sandbox.runCode: an exception comes back as error with name, value and traceback, and onError is called", async () => {
  const s = await sandbox()
  const seen = []
  const ex = await s.runCode("def f():\n    raise ValueError('bad value')\nf()", { onError: (e) => seen.push(e) })
  assert.equal(ex.error.name, "ValueError")
  assert.equal(ex.error.value, "bad value")
  assert.match(ex.error.traceback, /f\(\)/)
  assert.match(ex.error.traceback, /ValueError/)
  assert.equal(seen.length, 1)
  assert.equal(seen[0].name, "ValueError")
})

test("ci.sandbox.runCode: onStdout, onStderr and onResult stream while the cell runs", async () => {
  const s = await sandbox()
  const events = []
  const ex = await s.runCode(
    "import sys, time\nprint('one', flush=True)\ntime.sleep(0.5)\nprint('two', file=sys.stderr, flush=True)\ndisplay('shown')\n'last'",
    {
      onStdout: (m) => events.push(["out", m.line, m.error]),
      onStderr: (m) => events.push(["err", m.line, m.error]),
      onResult: (r) => events.push(["result", r.text, r.isMainResult]),
    },
  )
  assert.deepEqual(events, [
    ["out", "one\n", false],
    ["err", "two\n", true],
    ["result", "shown", false],
    ["result", "last", true],
  ])
  assert.equal(ex.text, "last") // a string's quotes are stripped, as E2B's server does
})

test("ci.sandbox.runCode: variables persist across runs, with envs per run", async () => {
  const s = await sandbox()
  await s.runCode("counter = 10")
  await s.runCode("counter += 5")
  assert.equal((await s.runCode("counter")).text, "15")
  const ex = await s.runCode("import os\nos.environ.get('GREETING')", { envs: { GREETING: "hi there" } })
  assert.equal(ex.text, "hi there")
})

test("ci.sandbox.createCodeContext, ci.sandbox.listCodeContexts, ci.sandbox.restartCodeContext, ci.sandbox.removeCodeContext: separate kernel state", async () => {
  const s = await sandbox()
  await s.runCode("shared = 'default'")
  const ctx = await s.createCodeContext({ language: "python", cwd: "/tmp" })
  assert.ok(ctx.id)
  assert.equal(ctx.language, "python")
  assert.equal(ctx.cwd, "/tmp")
  assert.ok((await s.listCodeContexts()).some((c) => c.id === ctx.id))

  // A context has its own variables and cwd; the default one keeps its own.
  const missing = await s.runCode("shared", { context: ctx })
  assert.equal(missing.error?.name, "NameError")
  await s.runCode("mine = 7", { context: ctx })
  assert.equal((await s.runCode("import os\nos.getcwd()", { context: ctx })).text, "/tmp")
  assert.equal((await s.runCode("mine", { context: ctx })).text, "7")
  assert.equal((await s.runCode("shared")).text, "default")
  await assert.rejects(s.runCode("1", { context: ctx, language: "python" }), /context or language/)

  // Restart forgets the context's state; remove makes it unknown.
  await s.restartCodeContext(ctx)
  assert.equal((await s.runCode("mine", { context: ctx })).error?.name, "NameError")
  await s.removeCodeContext(ctx.id)
  assert.ok(!(await s.listCodeContexts()).some((c) => c.id === ctx.id))
  await assert.rejects(s.runCode("1", { context: ctx }))
})

test("ci.sandbox.runCode: kernel state survives sandbox.pause and Sandbox.connect", async () => {
  const s = await sandbox()
  await s.runCode("import numpy as np\nkept = np.arange(5).sum()")
  assert.equal(await s.pause(), true)
  assert.equal((await s.getInfo()).state, "paused")
  const again = await Sandbox.connect(s.sandboxId)
  assert.ok(again instanceof Sandbox)
  assert.equal((await again.runCode("int(kept)")).text, "10")
  assert.equal((await again.runCode("kept = kept + 1\nint(kept)")).text, "11")
})
