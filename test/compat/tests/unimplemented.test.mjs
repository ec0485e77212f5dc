// SDK features stasis does not serve yet would each be a test skipped with
// the reason here, so the suite's output lists them (docs/COMPATIBILITY.md
// carries the same list; check/compatibility-doc.test.mjs fails when the two
// disagree). Every feature of the pinned SDK is served now: what is left is
// the guard below.

import { test } from "node:test"
import assert from "node:assert/strict"

// A guard for SDK upgrades: the methods this suite and docs/COMPATIBILITY.md
// account for are exactly the ones the pinned SDK has.
test("the pinned SDK's public surface is the one this suite covers", async () => {
  const sdk = await import("@superserve/sdk")
  const methods = (cls) => ({
    static: Object.getOwnPropertyNames(cls).filter((n) => typeof cls[n] === "function").sort(),
    instance: Object.getOwnPropertyNames(cls.prototype).filter((n) => n !== "constructor" && !n.startsWith("_")).sort(),
  })
  assert.deepEqual(Object.keys(sdk).sort(), [
    "AuthenticationError", "BuildError", "ConflictError", "MAX_PREVIEW_PORT", "MIN_PREVIEW_PORT", "NotFoundError",
    "Provider", "RateLimitError", "Sandbox", "SandboxError", "Secret", "ServerError", "Template", "TimeoutError",
    "ValidationError", "previewUrl", "resolveConfig",
  ])
  assert.deepEqual(methods(sdk.Sandbox), {
    static: ["buildUpdateBody", "connect", "create", "killById", "list", "updateById"],
    instance: ["attachSecret", "detachSecret", "getInfo", "getNetworkLog", "getPreviewUrl", "kill", "pause", "resume", "update"],
  })
  assert.deepEqual(methods(sdk.Template), {
    static: ["connect", "create", "deleteById", "list"],
    instance: ["cancelBuild", "delete", "getBuild", "getInfo", "listBuilds", "rebuild", "streamBuildLogs", "waitUntilReady"],
  })
  assert.deepEqual(methods(sdk.Secret), {
    static: ["create", "deleteByName", "get", "list"],
    instance: ["delete", "getAudit", "getInfo", "getSandboxes", "rotate"],
  })
  assert.deepEqual(methods(sdk.Provider), { static: ["list"], instance: [] })
})
