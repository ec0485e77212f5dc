// The control plane: Sandbox.create options, Sandbox.list, getInfo, update,
// updateById, the lifecycle with running processes, and the error classes.

import { test } from "node:test"
import assert from "node:assert/strict"
import {
  Sandbox,
  SandboxError,
  AuthenticationError,
  ConflictError,
  NotFoundError,
  ValidationError,
} from "@superserve/sdk"
import { MINIMAL, RUN_ID, SLOW, createMinimal, rejectsWith, uniqueName, sleep, eventually, unzip, readCounter, STASIS_URL } from "../lib/helpers.mjs"

test("Sandbox.create: instance fields, and getInfo()", SLOW, async (t) => {
  const before = Date.now()
  const name = uniqueName("info")
  const sandbox = await createMinimal(t, { name, metadata: { suite: RUN_ID, kind: "info" } })

  assert.match(sandbox.id, /^[0-9a-f-]{8,}$/i)
  assert.equal(sandbox.name, name)
  assert.equal(sandbox.status, "active")
  assert.deepEqual(sandbox.metadata, { suite: RUN_ID, kind: "info" })

  const info = await sandbox.getInfo()
  assert.equal(info.id, sandbox.id)
  assert.equal(info.name, name)
  assert.equal(info.status, "active")
  assert.ok(info.vcpuCount > 0, `vcpuCount ${info.vcpuCount}`)
  assert.ok(info.memoryMib > 0, `memoryMib ${info.memoryMib}`)
  assert.ok(info.createdAt instanceof Date)
  assert.ok(Math.abs(info.createdAt.getTime() - before) < 120_000, `createdAt ${info.createdAt.toISOString()}`)
  assert.deepEqual(info.metadata, { suite: RUN_ID, kind: "info" })
  assert.equal(info.timeoutSeconds, undefined)
  assert.equal(info.autoDeleteSeconds, undefined)
  assert.equal(info.autoDeleteAt, undefined)
})

test("Sandbox.create with timeoutSeconds, autoDeleteSeconds and envVars", SLOW, async (t) => {
  const sandbox = await createMinimal(t, {
    timeoutSeconds: 3600,
    autoDeleteSeconds: 7200,
    envVars: { APP_MODE: "compat", SECOND: "two words" },
  })
  const info = await sandbox.getInfo()
  assert.equal(info.timeoutSeconds, 3600)
  assert.equal(info.autoDeleteSeconds, 7200)
  const r = await sandbox.commands.run('echo "$APP_MODE|$SECOND"')
  assert.equal(r.stdout, "compat|two words\n")
  // A command's env adds to and overrides the sandbox's.
  const o = await sandbox.commands.run('echo "$APP_MODE|$SECOND"', { env: { APP_MODE: "override" } })
  assert.equal(o.stdout, "override|two words\n")
})

test("Sandbox.list, with and without a metadata filter", SLOW, async (t) => {
  const a = await createMinimal(t, { namePrefix: "list-a", metadata: { suite: RUN_ID, role: "a", shared: "yes" } })
  const b = await createMinimal(t, { namePrefix: "list-b", metadata: { suite: RUN_ID, role: "b", shared: "yes" } })

  const all = await Sandbox.list()
  assert.ok(all.some((s) => s.id === a.id) && all.some((s) => s.id === b.id), "list() includes both")
  for (const s of all) {
    assert.ok(s.createdAt instanceof Date && typeof s.status === "string" && typeof s.metadata === "object")
  }

  const both = await Sandbox.list({ metadata: { suite: RUN_ID, shared: "yes" } })
  assert.deepEqual(both.map((s) => s.id).sort(), [a.id, b.id].sort())

  const onlyA = await Sandbox.list({ metadata: { suite: RUN_ID, role: "a" } })
  assert.deepEqual(onlyA.map((s) => s.id), [a.id])
  assert.deepEqual(onlyA[0].metadata, { suite: RUN_ID, role: "a", shared: "yes" })

  assert.deepEqual(await Sandbox.list({ metadata: { suite: RUN_ID, role: "nobody" } }), [])

  // A paused sandbox is listed as paused.
  await b.pause()
  const paused = await Sandbox.list({ metadata: { suite: RUN_ID, role: "b" } })
  assert.equal(paused[0]?.status, "paused")
})

test("sandbox.update: metadata, timeout and auto-delete, and null to clear", SLOW, async (t) => {
  const sandbox = await createMinimal(t, { metadata: { suite: RUN_ID, v: "1" } })

  await sandbox.update({ metadata: { suite: RUN_ID, v: "2", extra: "yes" } })
  assert.deepEqual((await sandbox.getInfo()).metadata, { suite: RUN_ID, v: "2", extra: "yes" })

  await sandbox.update({ timeoutSeconds: 900, autoDeleteSeconds: 86_400 })
  let info = await sandbox.getInfo()
  assert.equal(info.timeoutSeconds, 900)
  assert.equal(info.autoDeleteSeconds, 86_400)
  assert.deepEqual(info.metadata, { suite: RUN_ID, v: "2", extra: "yes" }, "fields not sent are left alone")

  await sandbox.update({ timeoutSeconds: null, autoDeleteSeconds: null })
  info = await sandbox.getInfo()
  assert.equal(info.timeoutSeconds, undefined)
  assert.equal(info.autoDeleteSeconds, undefined)
  assert.equal(info.status, "active")
})

test("Sandbox.updateById leaves a paused sandbox paused; autoDeleteAt counts from the pause", SLOW, async (t) => {
  const sandbox = await createMinimal(t, { metadata: { suite: RUN_ID } })
  await sandbox.pause()
  const pausedAt = Date.now()

  await Sandbox.updateById(sandbox.id, { metadata: { suite: RUN_ID, by: "id" }, autoDeleteSeconds: 3600, timeoutSeconds: 600 })
  let info = await sandbox.getInfo()
  assert.equal(info.status, "paused", "updateById does not activate")
  assert.deepEqual(info.metadata, { suite: RUN_ID, by: "id" })
  assert.equal(info.autoDeleteSeconds, 3600)
  assert.equal(info.timeoutSeconds, 600)
  assert.ok(info.autoDeleteAt instanceof Date, "a paused sandbox with auto-delete reports autoDeleteAt")
  assert.ok(Math.abs(info.autoDeleteAt.getTime() - (pausedAt + 3600_000)) < 60_000, `autoDeleteAt ${info.autoDeleteAt.toISOString()}`)

  await Sandbox.updateById(sandbox.id, { autoDeleteSeconds: null, timeoutSeconds: null })
  info = await sandbox.getInfo()
  assert.equal(info.autoDeleteSeconds, undefined)
  assert.equal(info.autoDeleteAt, undefined)
  assert.equal(info.timeoutSeconds, undefined)
  assert.equal(info.status, "paused")

  await rejectsWith(() => Sandbox.updateById("00000000-0000-0000-0000-000000000000", { metadata: {} }), NotFoundError, "updateById of an unknown id")
})

test("pause and resume keep running processes and files", SLOW, async (t) => {
  const sandbox = await createMinimal(t)
  await sandbox.commands.run(
    "echo kept > /tmp/kept.txt; (i=0; while :; do i=$((i+1)); echo $i > /tmp/counter; sleep 0.1; done) >/dev/null 2>&1 &",
  )
  await sleep(500)
  const before = await readCounter(sandbox, "/tmp/counter")
  assert.ok(before > 0)

  await sandbox.pause()
  assert.equal((await sandbox.getInfo()).status, "paused")
  await sandbox.resume()
  assert.equal((await sandbox.getInfo()).status, "active")

  assert.equal(await sandbox.files.readText("/tmp/kept.txt"), "kept\n")
  const resumed = await readCounter(sandbox, "/tmp/counter")
  assert.ok(resumed >= before, `counter went from ${before} to ${resumed} across pause/resume`)
  await sleep(500)
  const later = await readCounter(sandbox, "/tmp/counter")
  assert.ok(later > resumed, `the background loop keeps counting after resume (${resumed} -> ${later})`)
})

test("errors: ConflictError for pausing a paused sandbox", SLOW, async (t) => {
  const sandbox = await createMinimal(t)
  await sandbox.pause()
  const err = await rejectsWith(() => sandbox.pause(), ConflictError, "second pause")
  assert.equal(err.statusCode, 409)
  assert.ok(err instanceof SandboxError)
})

test("errors: NotFoundError after kill", SLOW, async (t) => {
  const sandbox = await createMinimal(t)
  await sandbox.kill()
  for (const [what, fn] of [
    ["getInfo", () => sandbox.getInfo()],
    ["pause", () => sandbox.pause()],
    ["resume", () => sandbox.resume()],
    ["update", () => sandbox.update({ metadata: { a: "b" } })],
    ["connect", () => Sandbox.connect(sandbox.id)],
    ["commands.run", () => sandbox.commands.run("true")],
    ["commands.run (streamed)", () => sandbox.commands.run("true", { onStdout: () => {} })],
    ["commands.spawn", () => sandbox.commands.spawn("true")],
    ["files.read", () => sandbox.files.read("/etc/hostname")],
    ["files.write", () => sandbox.files.write("/tmp/x", "x")],
  ]) {
    const err = await rejectsWith(fn, NotFoundError, `${what} after kill`)
    assert.equal(err.statusCode, 404)
  }
})

test("errors: AuthenticationError for a bad API key", SLOW, async () => {
  const bad = { apiKey: "not-a-valid-key", baseUrl: STASIS_URL }
  const err = await rejectsWith(() => Sandbox.list(bad), AuthenticationError, "list with a bad key")
  assert.equal(err.statusCode, 401)
  await rejectsWith(() => Sandbox.create({ ...bad, name: "never", fromTemplate: MINIMAL }), AuthenticationError, "create with a bad key")
  await rejectsWith(() => Sandbox.connect("00000000-0000-0000-0000-000000000000", bad), AuthenticationError, "connect with a bad key")
})

test("errors: ValidationError and NotFoundError for bad input", SLOW, async (t) => {
  const err = await rejectsWith(
    () => Sandbox.create({ name: uniqueName("bad"), fromTemplate: MINIMAL, timeoutSeconds: -5 }),
    ValidationError,
    "create with a negative timeout",
  )
  assert.equal(err.statusCode, 400)
  await rejectsWith(
    () => Sandbox.create({ name: uniqueName("bad"), fromTemplate: "no-such-template" }),
    NotFoundError,
    "create from an unknown template",
  )
  const sandbox = await createMinimal(t)
  await rejectsWith(() => sandbox.commands.run(""), ValidationError, "an empty command")
})

test("every data-plane call resumes a paused sandbox transparently", SLOW, async (t) => {
  const sandbox = await createMinimal(t)
  await sandbox.files.write("/tmp/d/f.txt", "kept")
  const calls = [
    ["commands.run (buffered)", async () => assert.equal((await sandbox.commands.run("cat /tmp/d/f.txt")).stdout, "kept")],
    ["commands.run (streamed)", async () => assert.equal((await sandbox.commands.run("cat /tmp/d/f.txt", { onStdout: () => {} })).stdout, "kept")],
    ["commands.spawn", async () => assert.equal((await (await sandbox.commands.spawn("cat /tmp/d/f.txt")).wait()).stdout, "kept")],
    ["files.read", async () => assert.equal(await sandbox.files.readText("/tmp/d/f.txt"), "kept")],
    ["files.write", async () => sandbox.files.write("/tmp/d/g.txt", "new")],
    ["files.downloadDir", async () => assert.equal(unzip(await sandbox.files.downloadDir("/tmp/d")).get("d/f.txt")?.data.toString(), "kept")],
  ]
  for (const [what, call] of calls) {
    await sandbox.pause()
    assert.equal((await sandbox.getInfo()).status, "paused")
    await call().catch((err) => {
      throw new Error(`${what} on a paused sandbox: ${err.message}`, { cause: err })
    })
    assert.equal((await sandbox.getInfo()).status, "active", `${what} resumed the sandbox`)
  }
})

test("concurrent calls on a paused sandbox all succeed", SLOW, async (t) => {
  const sandbox = await createMinimal(t)
  await sandbox.pause()
  const results = await Promise.all([1, 2, 3, 4].map((i) => sandbox.commands.run(`echo ${i}`)))
  assert.deepEqual(results.map((r) => r.stdout), ["1\n", "2\n", "3\n", "4\n"])
  assert.equal((await sandbox.getInfo()).status, "active")
})

test("timeoutSeconds pauses an active sandbox; autoDeleteSeconds then deletes it", SLOW, async (t) => {
  const sandbox = await createMinimal(t, { timeoutSeconds: 2, autoDeleteSeconds: 3 })
  await eventually(async () => (await sandbox.getInfo()).status === "paused", { timeoutMs: 15_000, what: "the timeout to pause the sandbox" })
  const info = await sandbox.getInfo()
  assert.ok(info.autoDeleteAt instanceof Date, "a paused sandbox with auto-delete reports autoDeleteAt")
  await eventually(
    async () => {
      try {
        await sandbox.getInfo()
        return false
      } catch (err) {
        if (err instanceof NotFoundError) return true
        throw err
      }
    },
    { timeoutMs: 15_000, what: "auto-delete to remove the paused sandbox" },
  )
})

test("SDK configuration: explicit apiKey/baseUrl options and the SUPERSERVE_* environment", SLOW, async () => {
  const { resolveConfig } = await import("@superserve/sdk")
  assert.equal(resolveConfig().baseUrl, STASIS_URL, "SUPERSERVE_BASE_URL is honoured")
  const explicit = await Sandbox.list({ apiKey: process.env.STASIS_API_KEY, baseUrl: STASIS_URL })
  assert.ok(Array.isArray(explicit))
})
