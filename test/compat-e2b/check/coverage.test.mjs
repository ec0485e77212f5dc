// Checks that the suite covers every public method of the pinned e2b SDK
// and of @e2b/code-interpreter: each must be named by a test that passed,
// or by one skipped with a reason. Test names list the methods they
// exercise, e.g. "sandbox.files.makeDir, sandbox.files.rename: ...";
// @e2b/code-interpreter's own methods are named with a "ci." prefix, e.g.
// "ci.sandbox.runCode" (its Sandbox inherits e2b's, covered as e2b's).
import { test } from "node:test"
import assert from "node:assert/strict"
import { readFileSync } from "node:fs"
import { Sandbox } from "e2b"
import { Sandbox as CodeInterpreter } from "@e2b/code-interpreter"

// Internal helpers the public methods call, not methods users call.
const internal = new Set([
  "Sandbox.createSandbox", "Sandbox.connectSandbox", "Sandbox.forkSandbox", "Sandbox.getFullInfo",
  "Sandbox.defaultTemplate", "Sandbox.defaultMcpTemplate", "sandbox.resolveApiOpts",
  "sandbox.commands.supportsStdinClose",
  // @e2b/code-interpreter: its URL and error helpers behind runCode and the context calls.
  "ci.sandbox.jupyterUrl", "ci.sandbox.getJupyterRequestUrl", "ci.sandbox.includeDiagnostics",
  "ci.sandbox.handleRequestError",
])

function methods(prefix, proto) {
  return Object.getOwnPropertyNames(proto)
    .filter((n) => n !== "constructor" && !n.startsWith("_"))
    .map((n) => `${prefix}.${n}`)
}

const sbx = new Sandbox({ sandboxId: "x", envdVersion: "0.5.7" })
const all = [
  ...Object.getOwnPropertyNames(Sandbox).filter((n) => typeof Sandbox[n] === "function").map((n) => `Sandbox.${n}`),
  ...Object.getOwnPropertyNames(Object.getPrototypeOf(Sandbox)).filter((n) => typeof Sandbox[n] === "function").map((n) => `Sandbox.${n}`),
  ...methods("sandbox", Sandbox.prototype),
  ...methods("sandbox.commands", Object.getPrototypeOf(sbx.commands)),
  ...methods("sandbox.files", Object.getPrototypeOf(sbx.files)),
  ...methods("sandbox.pty", Object.getPrototypeOf(sbx.pty)),
  ...Object.getOwnPropertyNames(CodeInterpreter).filter((n) => typeof CodeInterpreter[n] === "function").map((n) => `ci.Sandbox.${n}`),
  ...methods("ci.sandbox", CodeInterpreter.prototype),
].filter((m) => !internal.has(m))

const results = readFileSync(process.env.STASIS_COMPAT_RESULTS, "utf8").trim().split("\n").map((l) => JSON.parse(l))

test("the check knows @e2b/code-interpreter's methods", () => {
  for (const m of ["ci.sandbox.runCode", "ci.sandbox.createCodeContext", "ci.sandbox.listCodeContexts",
    "ci.sandbox.restartCodeContext", "ci.sandbox.removeCodeContext"]) assert.ok(all.includes(m), m)
})

test("every public e2b and @e2b/code-interpreter method is covered by a passing test or skipped with a reason", () => {
  const missing = all.filter((m) => {
    const re = new RegExp(`(^|[\\s,])${m.replace(/\./g, "\\.")}(\\b(?!\\.)|$)`)
    return !results.some((r) => re.test(r.name) && (r.status === "pass" || (r.status === "skip" && r.reason)))
      && !(m.startsWith("sandbox.git") && results.some((r) => r.name.includes("sandbox.git") && r.reason))
  })
  assert.deepEqual(missing, [], "methods no passing or reasoned-skip test names")
})
