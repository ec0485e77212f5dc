// Shared helpers: every sandbox a test creates is killed when its file ends.
import { after } from "node:test"
import { Sandbox } from "e2b"

const created = []
after(async () => {
  await Promise.allSettled(created.map((s) => Sandbox.kill(s.sandboxId)))
})

/** Sandbox.create with the options given, killed after the file's tests. */
export async function newSandbox(opts = {}) {
  const sbx = await Sandbox.create("base", { timeoutMs: 300_000, ...opts })
  created.push(sbx)
  return sbx
}

/** Polls fn until it returns a truthy value or timeoutMs passes. */
export async function eventually(fn, timeoutMs = 30_000) {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const v = await fn()
    if (v) return v
    if (Date.now() > deadline) throw new Error("condition not met within " + timeoutMs + " ms")
    await new Promise((r) => setTimeout(r, 200))
  }
}
