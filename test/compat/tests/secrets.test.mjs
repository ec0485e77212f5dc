// Secrets and providers through the official SDK. stasisd runs with
// --egress deny and no upstream resolver (run.sh), so nothing here leaves
// the machine: these tests cover the API, the bindings and the stand-in
// tokens a sandbox sees. Injection at egress itself runs against a test
// internet in the Go suite (test/e2e/secrets_test.go).

import { describe, test } from "node:test"
import assert from "node:assert/strict"
import { randomBytes } from "node:crypto"
import { ConflictError, NotFoundError, Provider, Secret, ValidationError } from "@superserve/sdk"
import { SLOW, createMinimal, rejectsWith, uniqueName } from "../lib/helpers.mjs"

const secretName = (p) => uniqueName(p).replace(/[^A-Za-z0-9_-]/g, "_")

describe("Provider", () => {
  test("Provider.list returns the catalogue: anthropic, openai, github first, each with hosts, auth and token shape", async () => {
    const list = await Provider.list()
    assert.deepEqual(list.slice(0, 3).map((p) => p.name), ["anthropic", "openai", "github"])
    const byName = Object.fromEntries(list.map((p) => [p.name, p]))
    assert.deepEqual(byName.anthropic, {
      name: "anthropic", display: "Anthropic", authType: "api-key", authConfig: { header: "x-api-key" },
      hosts: ["api.anthropic.com"], tokenShape: "sk-ant-api03-...",
    })
    assert.equal(byName.openai.authType, "bearer")
    assert.deepEqual(byName.openai.hosts, ["api.openai.com"])
    assert.equal(byName.github.authType, "per_host")
    assert.deepEqual(byName.github.hosts, ["api.github.com", "github.com"])
    assert.equal(byName.github.tokenShape, "ghp_...")
    for (const p of list) {
      assert.ok(p.hosts.length > 0 && p.tokenShape.endsWith("..."), `provider ${p.name}`)
    }
  })
})

describe("Secret", () => {
  test("Secret.create, get, list, rotate, getInfo, getSandboxes, getAudit, delete: never a value back", async () => {
    const value = "sk-ant-real-" + randomBytes(12).toString("hex")
    const name = secretName("anthropic")
    const secret = await Secret.create({ name, value, provider: "anthropic" })
    assert.match(secret.id, /^sec_/)
    assert.equal(secret.name, name)
    assert.equal(secret.authType, "api-key")
    assert.deepEqual(secret.authConfig, { header: "x-api-key" })
    assert.equal(secret.providerShortcut, "anthropic")
    assert.deepEqual(secret.hosts, ["api.anthropic.com"])
    assert.ok(secret.createdAt instanceof Date && secret.lastUsedAt === undefined)
    assert.ok(!JSON.stringify(secret).includes(value))

    const got = await Secret.get(name)
    assert.equal(got.id, secret.id)
    const listed = (await Secret.list()).find((s) => s.name === name)
    assert.equal(listed.id, secret.id)
    assert.ok(!JSON.stringify(await Secret.list()).includes(value))

    const rotated = await secret.rotate(value + "-2")
    assert.equal(rotated.id, secret.id)
    assert.ok(rotated.updatedAt >= secret.updatedAt)
    assert.equal((await rotated.getInfo()).name, name)
    assert.deepEqual(await secret.getSandboxes(), [])
    assert.deepEqual(await secret.getAudit({ limit: 10, status: "errors" }), [])

    // A custom secret: per-host rules.
    const gh = await Secret.create({
      name: secretName("gh"), value: "ghp_real", hosts: ["api.github.com", "github.com"],
      auth: { perHost: [{ hosts: ["api.github.com"], type: "bearer" }, { hosts: ["github.com"], type: "basic", username: "x-access-token" }] },
    })
    assert.equal(gh.authType, "per_host")
    assert.equal(gh.authConfig.per_host.length, 2)

    // Bad input: ValidationError, nothing stored; a taken name: ConflictError.
    await rejectsWith(() => Secret.create({ name: "bad name", value: "v", provider: "openai" }), ValidationError, "a bad name")
    await rejectsWith(() => Secret.create({ name: secretName("x"), value: "v", provider: "openai", auth: { type: "bearer" }, hosts: ["a.test"] }), ValidationError, "provider and auth")
    await rejectsWith(() => Secret.create({ name: secretName("x"), value: "v", auth: { type: "api-key" }, hosts: ["a.test"] }), ValidationError, "api-key without header")
    await rejectsWith(() => Secret.create({ name: secretName("x"), value: "v", auth: { type: "bearer" }, hosts: ["*.com"] }), ValidationError, "a wildcard on a TLD")
    await rejectsWith(() => Secret.create({ name, value: "v", provider: "openai" }), ConflictError, "a taken name")

    await secret.delete()
    await rejectsWith(() => Secret.get(name), NotFoundError, "a deleted secret")
    await secret.delete() // idempotent
    await Secret.deleteByName(gh.name)
    await Secret.deleteByName(gh.name)
    assert.equal((await Secret.list()).find((s) => s.name === name || s.name === gh.name), undefined)
  })

  test("Sandbox.create({ secrets }), attachSecret, detachSecret: the sandbox sees only stand-in tokens", SLOW, async (t) => {
    const value = "sk-real-" + randomBytes(12).toString("hex")
    const ant = await Secret.create({ name: secretName("ant"), value, provider: "anthropic" })
    const oai = await Secret.create({ name: secretName("oai"), value: value + "-oai", provider: "openai" })
    t.after(async () => { await ant.delete(); await oai.delete() })

    const sandbox = await createMinimal(t, { secrets: { ANTHROPIC_API_KEY: ant.name } })
    assert.deepEqual(sandbox.secrets, [{ envKey: "ANTHROPIC_API_KEY", secretName: ant.name, revoked: undefined }])
    const tok = (await sandbox.commands.run("echo $ANTHROPIC_API_KEY")).stdout.trim()
    assert.match(tok, /^sk-ant-api03-[A-Za-z0-9_-]{40,}$/)
    assert.ok(!tok.includes(value))
    const bound = await ant.getSandboxes()
    assert.deepEqual(bound.map((b) => [b.sandboxId, b.envKey, b.status]), [[sandbox.id, "ANTHROPIC_API_KEY", "active"]])

    await sandbox.attachSecret("OPENAI_API_KEY", oai.name)
    assert.match((await sandbox.commands.run("echo $OPENAI_API_KEY")).stdout.trim(), /^sk-proj-/)
    const info = await sandbox.getInfo()
    assert.deepEqual(info.secrets.map((s) => s.envKey).sort(), ["ANTHROPIC_API_KEY", "OPENAI_API_KEY"])
    await rejectsWith(() => sandbox.attachSecret("OPENAI_API_KEY", oai.name), ConflictError, "an env key bound twice")
    await rejectsWith(() => sandbox.attachSecret("X", "no-such-secret"), NotFoundError, "a missing secret")

    await sandbox.detachSecret("OPENAI_API_KEY")
    assert.equal((await sandbox.commands.run("echo ${OPENAI_API_KEY:-unset}")).stdout.trim(), "unset")
    await rejectsWith(() => sandbox.detachSecret("OPENAI_API_KEY"), NotFoundError, "a second detach")

    // Deleting the secret revokes the binding; the env var stays.
    await ant.delete()
    const after = await sandbox.getInfo()
    assert.deepEqual(after.secrets, [{ envKey: "ANTHROPIC_API_KEY", secretName: ant.name, revoked: true }])
    assert.equal((await sandbox.commands.run("echo $ANTHROPIC_API_KEY")).stdout.trim(), tok)
    const envAll = (await sandbox.commands.run("cat /proc/[0-9]*/environ | tr '\\0' '\\n'; env")).stdout
    assert.ok(!envAll.includes(value), "the real value is in the sandbox's environment")
  })
})
