// Checks that the suite covers every public method of the pinned e2b SDK:
// each must be named by a test that passed, or by one skipped with a
// reason. Test names list the methods they exercise, e.g.
// "sandbox.files.makeDir, sandbox.files.rename: ...".
import { test } from "node:test"
import assert from "node:assert/strict"
import { readFileSync } from "node:fs"
import { Sandbox } from "e2b"

// Internal helpers the public methods call, not methods users call.
const internal = new Set([
  "Sandbox.createSandbox", "Sandbox.connectSandbox", "Sandbox.forkSandbox", "Sandbox.getFullInfo",
  "Sandbox.defaultTemplate", "Sandbox.defaultMcpTemplate", "sandbox.resolveApiOpts",
  "sandbox.commands.supportsStdinClose",
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
].filter((m) => !internal.has(m))

const results = readFileSync(process.env.STASIS_COMPAT_RESULTS, "utf8").trim().split("\n").map((l) => JSON.parse(l))

test("every public e2b method is covered by a passing test or skipped with a reason", () => {
  const missing = all.filter((m) => {
    const re = new RegExp(`(^|[\\s,])${m.replace(/\./g, "\\.")}(\\b(?!\\.)|$)`)
    return !results.some((r) => re.test(r.name) && (r.status === "pass" || (r.status === "skip" && r.reason)))
      && !(m.startsWith("sandbox.git") && results.some((r) => r.name.includes("sandbox.git") && r.reason))
  })
  assert.deepEqual(missing, [], "methods no passing or reasoned-skip test names")
})
