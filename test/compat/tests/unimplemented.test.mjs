// SDK features stasis does not serve yet. Each one is a test that is skipped
// with the reason, so the suite's output lists it instead of leaving it out;
// docs/COMPATIBILITY.md carries the same list (check/compatibility-doc.test.mjs
// fails when the two disagree). When stasis implements one, replace its skip
// with a real test and its row's ⏭ with ✅.

import { describe, test } from "node:test"
import assert from "node:assert/strict"

const SECRETS = "stasis does not implement secrets yet (credential injection into outbound requests)"
const PROVIDERS = "stasis does not implement secret provider shortcuts yet"

function unimplemented(name, reason) {
  test(name, (t) => {
    t.skip(reason)
  })
}

describe("Secret (not implemented)", () => {
  unimplemented("Secret.create", SECRETS)
  unimplemented("Secret.get", SECRETS)
  unimplemented("Secret.list", SECRETS)
  unimplemented("Secret.deleteByName", SECRETS)
  unimplemented("secret.getInfo", SECRETS)
  unimplemented("secret.rotate", SECRETS)
  unimplemented("secret.delete", SECRETS)
  unimplemented("secret.getAudit", SECRETS)
  unimplemented("secret.getSandboxes", SECRETS)
  unimplemented("sandbox.attachSecret", SECRETS)
  unimplemented("sandbox.detachSecret", SECRETS)
  unimplemented("Sandbox.create({ secrets })", SECRETS)
})

describe("Provider (not implemented)", () => {
  unimplemented("Provider.list", PROVIDERS)
})

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
