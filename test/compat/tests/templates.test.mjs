// Templates: the SDK's whole Template class against stasisd's template API
// (POST /templates, builds, SSE build logs), with real builds on
// stasis/minimal (busybox), which boot and snapshot in seconds, and real
// sandboxes started from what was built.

import { describe, test, after } from "node:test"
import assert from "node:assert/strict"
import { Sandbox, Template, BuildError, ConflictError, NotFoundError, ValidationError, SandboxError } from "@superserve/sdk"
import { MINIMAL, RUN_ID, SLOW, createMinimal, rejectsWith, uniqueName, eventually, readCounter } from "../lib/helpers.mjs"

const STREAMS = new Set(["stdout", "stderr", "system"])
const BUILD_STATUSES = new Set(["pending", "building", "snapshotting", "ready", "failed", "cancelled"])

/** Checks the fields every build log event must have and joins their text. */
function logText(events) {
  for (const ev of events) {
    assert.ok(ev.timestamp instanceof Date && !Number.isNaN(ev.timestamp.getTime()), `timestamp ${ev.timestamp}`)
    assert.ok(STREAMS.has(ev.stream), `stream ${ev.stream}`)
    assert.equal(typeof ev.text, "string")
  }
  return events.map((ev) => ev.text).join("")
}

/** Creates a template and deletes it when the test (or suite) ends. */
async function createTemplate(t, options) {
  const template = await Template.create({ from: MINIMAL, ...options })
  t.after(() => template.delete())
  return template
}

describe("Template: a stasis/minimal template built with run, env and workdir steps", () => {
  const prefix = `tpl-${RUN_ID}-`
  const name = `${prefix}app`
  const steps = [
    { run: "echo built-by-compat; mkdir -p /opt/app && echo v1 > /opt/app/version" },
    { env: { key: "APP_STAGE", value: "compat" } },
    { workdir: "/opt/app" },
    { run: 'echo "$APP_STAGE in $(pwd)" > built-in' },
  ]
  // Left running by the build; its state is in the template's snapshot.
  const startCmd = "while true; do date +%s > /tmp/heartbeat; sleep 1; done"
  const readyCmd = "test -s /tmp/heartbeat"
  let template
  let ready
  let onLogEvents = []

  after(() => template?.delete(), SLOW)

  test("Template.create sends the build spec and returns the template with its first build", SLOW, async () => {
    const before = Date.now()
    template = await Template.create({ name, from: MINIMAL, steps, startCmd, readyCmd, vcpu: 1, memoryMib: 256 })
    assert.match(template.id, /^[0-9a-f-]{8,}$/i)
    assert.equal(template.name, name)
    assert.ok(["pending", "building"].includes(template.status), `status ${template.status}`)
    assert.ok(template.teamId, "teamId")
    assert.equal(template.vcpu, 1)
    assert.equal(template.memoryMib, 256)
    assert.ok(template.createdAt instanceof Date && Math.abs(template.createdAt.getTime() - before) < 120_000)
    assert.ok(template.latestBuildId, "latestBuildId is the create response's build_id")
    assert.equal(template.builtAt, undefined)
  })

  test("template.waitUntilReady({ onLog }) streams the build log live and returns the ready template", SLOW, async () => {
    ready = await template.waitUntilReady({ onLog: (ev) => onLogEvents.push(ev), pollIntervalMs: 200 })
    assert.equal(ready.id, template.id)
    assert.equal(ready.status, "ready")
    assert.ok(ready.builtAt instanceof Date, "builtAt")
    assert.ok(ready.sizeBytes > 0, `sizeBytes ${ready.sizeBytes}`)
    assert.equal(ready.errorMessage, undefined)
    assert.equal(ready.latestBuildId, template.latestBuildId)
    // The log arrived while the build ran: the first step's output, on stdout.
    const text = logText(onLogEvents)
    assert.ok(onLogEvents.some((ev) => ev.stream === "stdout" && ev.text.includes("built-by-compat")), `onLog saw no step output:\n${text}`)
  })

  test("template.getInfo, Template.connect by name and by id", SLOW, async () => {
    const info = await template.getInfo()
    assert.equal(info.status, "ready")
    assert.equal(info.name, name)
    assert.equal(info.latestBuildId, template.latestBuildId)
    assert.deepEqual(info.builtAt, ready.builtAt)

    const byName = await Template.connect(name)
    assert.ok(byName instanceof Template)
    assert.equal(byName.id, template.id)
    assert.equal(byName.status, "ready")
    assert.equal(byName.latestBuildId, template.latestBuildId)
    const byId = await Template.connect(template.id)
    assert.equal(byId.name, name)
  })

  test("Template.list, with and without namePrefix", SLOW, async () => {
    const mine = await Template.list({ namePrefix: prefix })
    assert.deepEqual(mine.map((t) => t.name), [name])
    assert.equal(mine[0].id, template.id)
    assert.equal(mine[0].status, "ready")
    const all = await Template.list()
    assert.ok(all.some((t) => t.id === template.id), "list() includes the template")
    assert.deepEqual(await Template.list({ namePrefix: `${prefix}nothing-` }), [])
  })

  test("template.listBuilds and template.getBuild", SLOW, async () => {
    const builds = await template.listBuilds()
    assert.equal(builds.length, 1)
    const [b] = builds
    assert.equal(b.id, template.latestBuildId)
    assert.equal(b.templateId, template.id)
    assert.equal(b.status, "ready")
    assert.ok(b.buildSpecHash, "buildSpecHash")
    assert.ok(b.createdAt instanceof Date && b.startedAt instanceof Date && b.finalizedAt instanceof Date)
    assert.ok(b.startedAt <= b.finalizedAt)
    assert.deepEqual(await template.listBuilds({ limit: 1 }), builds)

    assert.deepEqual(await template.getBuild(b.id), b)
    await rejectsWith(() => template.getBuild("00000000-0000-4000-8000-000000000000"), NotFoundError, "an unknown build")
  })

  test("template.streamBuildLogs replays a finished build's log and ends with its status", SLOW, async () => {
    const events = []
    await template.streamBuildLogs({ onEvent: (ev) => events.push(ev) })
    const text = logText(events)
    assert.ok(text.includes("built-by-compat"), `replayed log lacks the step's output:\n${text}`)
    const last = events.at(-1)
    assert.equal(last.finished, true)
    assert.equal(last.status, "ready")
    // The same by explicit build id.
    const again = []
    await template.streamBuildLogs({ buildId: template.latestBuildId, onEvent: (ev) => again.push(ev) })
    assert.equal(again.at(-1).status, "ready")
  })

  test("Sandbox.create({ fromTemplate }) starts where the build left off: files, env, workdir, start_cmd running", SLOW, async (t) => {
    for (const fromTemplate of [template, name]) {
      const sandbox = await createMinimal(t, { fromTemplate })
      const r = await sandbox.commands.run('cat version built-in; echo "$APP_STAGE"; pwd')
      assert.equal(r.stdout, "v1\ncompat in /opt/app\ncompat\n/opt/app\n", r.stderr)
      // The start command was snapshotted running, and runs on.
      const first = await readCounter(sandbox, "/tmp/heartbeat")
      assert.ok(first > 0, `heartbeat ${first}`)
      await eventually(async () => (await readCounter(sandbox, "/tmp/heartbeat")) > first, {
        timeoutMs: 20_000,
        what: "the start_cmd's heartbeat to advance in the new sandbox",
      })
      const info = await sandbox.getInfo()
      assert.equal(info.vcpuCount, 1)
      assert.equal(info.memoryMib, 256)
    }
  })

  test("template.rebuild of an unchanged, ready template returns its ready build", SLOW, async () => {
    const b = await template.rebuild()
    assert.equal(b.id, template.latestBuildId)
    assert.equal(b.status, "ready")
    assert.equal((await template.listBuilds()).length, 1)
  })

  test("template.delete: the template is gone; Template.deleteById is idempotent", SLOW, async () => {
    await template.delete()
    await rejectsWith(() => Template.connect(name), NotFoundError, "connect to a deleted template")
    await rejectsWith(() => template.getInfo(), NotFoundError, "getInfo of a deleted template")
    await rejectsWith(
      () => Sandbox.create({ name: uniqueName("from-deleted"), fromTemplate: name }),
      NotFoundError,
      "create from a deleted template",
    )
    assert.deepEqual(await Template.list({ namePrefix: prefix }), [])
    await template.delete() // idempotent: 404 is swallowed
    await Template.deleteById(name)
    await Template.deleteById(template.id)
  })
})

test("Template: a user step (stasis/base): later steps and the sandbox's commands run as that user", SLOW, async (t) => {
  const template = await createTemplate(t, {
    name: uniqueName("tpl-user"),
    from: "stasis/base",
    steps: [{ user: { name: "app" } }, { run: "id -un > /tmp/built-as; touch ~/made-by-build" }],
  })
  await template.waitUntilReady({ pollIntervalMs: 200 })
  const sandbox = await createMinimal(t, { fromTemplate: template })
  const r = await sandbox.commands.run("id -un; cat /tmp/built-as; stat -c %U ~/made-by-build")
  assert.equal(r.stdout, "app\napp\napp\n", r.stderr)
})

describe("Template: failed, cancelled and refused builds", () => {
  test("a failing step: waitUntilReady rejects with BuildError (code step_failed); the template is failed", SLOW, async (t) => {
    const template = await createTemplate(t, {
      name: uniqueName("tpl-broken"),
      steps: [{ run: "echo about-to-fail >&2; exit 7" }, { run: "echo never-reached" }],
    })
    const events = []
    const err = await rejectsWith(() => template.waitUntilReady({ onLog: (ev) => events.push(ev), pollIntervalMs: 200 }), BuildError, "a failing build")
    assert.ok(err instanceof SandboxError)
    assert.equal(err.name, "BuildError")
    assert.equal(err.code, "step_failed")
    assert.equal(err.buildId, template.latestBuildId)
    assert.equal(err.templateId, template.id)
    assert.match(err.message, /exit(ed)? with code 7/)

    const build = await template.getBuild(template.latestBuildId)
    assert.equal(build.status, "failed")
    assert.match(build.errorMessage, /^step_failed: /)
    const info = await template.getInfo()
    assert.equal(info.status, "failed")
    assert.match(info.errorMessage, /^step_failed: /)
    // The failing step's stderr is in the log; the step after it never ran.
    const replay = []
    await template.streamBuildLogs({ onEvent: (ev) => replay.push(ev) })
    const text = logText(replay)
    assert.ok(text.includes("about-to-fail"), `log lacks the step's stderr:\n${text}`)
    assert.ok(!text.includes("never-reached"), "a step after the failed one ran")
    assert.equal(replay.at(-1).status, "failed")

    await rejectsWith(
      () => Sandbox.create({ name: uniqueName("from-failed"), fromTemplate: template }),
      ConflictError,
      "create from a failed template",
    )
  })

  test("template.cancelBuild stops a running build; waitUntilReady rejects; rebuild starts a new build", SLOW, async (t) => {
    const template = await createTemplate(t, {
      name: uniqueName("tpl-slow"),
      steps: [{ run: "echo slow-step-started; sleep 600" }],
    })
    const first = template.latestBuildId

    // Follow the live log until the slow step runs, then cancel the build.
    const events = []
    let sawStep
    const stepStarted = new Promise((resolve) => (sawStep = resolve))
    const stream = template.streamBuildLogs({
      onEvent: (ev) => {
        events.push(ev)
        if (ev.text.includes("slow-step-started")) sawStep()
      },
    })
    await Promise.race([stepStarted, stream])
    assert.ok(events.some((ev) => ev.text.includes("slow-step-started")), `the log ended before the step ran:\n${logText(events)}`)
    assert.equal((await template.getBuild(first)).status, "building")
    await template.cancelBuild(first)
    await stream // the server closes the stream once the build is over
    assert.equal(events.at(-1).finished, true)
    assert.equal(events.at(-1).status, "cancelled")

    const cancelled = await template.getBuild(first)
    assert.equal(cancelled.status, "cancelled")
    assert.ok(cancelled.finalizedAt instanceof Date)
    const err = await rejectsWith(() => template.waitUntilReady({ pollIntervalMs: 200 }), ConflictError, "waiting for a cancelled build")
    assert.equal(err.code, "cancelled")
    // A template whose only build was cancelled has nothing to start from:
    // it is failed (the SDKs know no other template status), saying why.
    const info = await template.getInfo()
    assert.equal(info.status, "failed")
    assert.match(info.errorMessage, /^cancelled: /)
    await template.cancelBuild(first) // a finished build: a no-op

    // The latest build was cancelled, so a rebuild really builds again.
    const second = await template.rebuild()
    assert.notEqual(second.id, first)
    assert.equal(second.templateId, template.id)
    assert.ok(BUILD_STATUSES.has(second.status) && !["ready", "failed", "cancelled"].includes(second.status), `status ${second.status}`)
    const builds = await template.listBuilds()
    assert.deepEqual(builds.map((b) => b.id), [second.id, first], "newest first")
    assert.deepEqual((await template.listBuilds({ limit: 1 })).map((b) => b.id), [second.id])
    assert.equal((await Template.connect(template.id)).latestBuildId, second.id)

    await template.cancelBuild(second.id)
    await eventually(async () => (await template.getBuild(second.id)).status === "cancelled", {
      timeoutMs: 60_000,
      what: "the rebuild to be cancelled",
    })
  })

  test("Template.create errors: a taken name is ConflictError, no from is ValidationError, an unknown template NotFoundError", SLOW, async (t) => {
    const template = await createTemplate(t, { name: uniqueName("tpl-taken") })
    await rejectsWith(() => Template.create({ name: template.name, from: MINIMAL }), ConflictError, "a taken name")
    await rejectsWith(() => Template.create({ name: uniqueName("tpl-nofrom") }), ValidationError, "no from")
    await rejectsWith(
      () => Template.create({ name: uniqueName("tpl-badstep"), from: MINIMAL, steps: [{ workdir: "relative" }] }),
      ValidationError,
      "a relative workdir",
    )
    await rejectsWith(() => Template.connect(uniqueName("tpl-missing")), NotFoundError, "connect to an unknown template")
    await rejectsWith(() => Sandbox.create({ name: uniqueName("sb"), fromTemplate: uniqueName("tpl-missing") }), NotFoundError, "create from an unknown template")
  })
})
