// The snippets of the page stasis was specified from
// (/work/shared/seed/sandbox-lifecycle.txt), run as written: no API key, no
// base URL and no template in the code. The SDK reads SUPERSERVE_API_KEY and
// SUPERSERVE_BASE_URL (run.sh points them at the local stasisd), and a
// sandbox created without a template gets stasis's default, stasis/base.
//
// The only change to a snippet is the placeholder id "7a3f2b8c-1234-...",
// which becomes the id of a real sandbox; where the snippet discards a result
// the test keeps it in a variable to check it.
//
// Snippets run in page order and share sandboxes the way the page's reader
// would: the "long-job" sandbox paused by the first one is the paused sandbox
// the second one connects to.

import { test, after } from "node:test"
import assert from "node:assert/strict"
import { Sandbox, NotFoundError } from "@superserve/sdk"
import { SLOW, createMinimal, rejectsWith } from "../lib/helpers.mjs"

const started = Date.now()
let longJobId // the paused sandbox from the Pause snippet

// The snippets have no cleanup of their own: kill what they created.
after(async () => {
  for (const info of await Sandbox.list()) {
    if (["long-job", "one-shot"].includes(info.name) && info.createdAt.getTime() >= started - 60_000) {
      await Sandbox.killById(info.id)
    }
  }
}, SLOW)

test("seed › Pause: Sandbox.create({ name: \"long-job\" }); sandbox.pause()", SLOW, async () => {
  // ---- seed snippet ----
  const sandbox = await Sandbox.create({ name: "long-job" })

  await sandbox.pause()
  // ---- end of snippet ----

  longJobId = sandbox.id
  assert.equal(sandbox.name, "long-job")
  assert.equal(sandbox.status, "active", "Sandbox.create returns an active sandbox")
  const info = await sandbox.getInfo()
  assert.equal(info.status, "paused")
})

test("seed › Resume: Sandbox.connect(id) of a paused sandbox; resume(); commands.run(\"ls /tmp\")", SLOW, async () => {
  let id = longJobId
  if (id === undefined) {
    // The Pause snippet failed; make the paused sandbox this snippet needs.
    const s = await Sandbox.create({ name: "long-job" })
    await s.pause()
    id = s.id
  }
  assert.equal((await Sandbox.list()).find((s) => s.id === id)?.status, "paused", "precondition: the sandbox is paused")

  // ---- seed snippet ("7a3f2b8c-1234-..." is the paused sandbox's id) ----
  const sandbox = await Sandbox.connect(id)

  // sandbox is currently paused

  await sandbox.resume()
  const result = await sandbox.commands.run("ls /tmp")
  // ---- end of snippet ----

  assert.equal(result.exitCode, 0, `ls /tmp failed: ${result.stderr}`)
  assert.equal((await sandbox.getInfo()).status, "active")
})

test("seed › commands.run() on a paused sandbox transparently resumes it", SLOW, async (t) => {
  // "You don't need to call resume() before running a command."
  const sandbox = await createMinimal(t, { namePrefix: "paused-run" })
  await sandbox.commands.run("echo before > /tmp/state")
  await sandbox.pause()
  assert.equal((await sandbox.getInfo()).status, "paused")

  const result = await sandbox.commands.run("ls /tmp")

  assert.equal(result.exitCode, 0, `ls /tmp failed: ${result.stderr}`)
  assert.match(result.stdout, /\bstate\b/, "the file written before the pause is still there")
  assert.equal((await sandbox.getInfo()).status, "active")
})

test("seed › Kill: Sandbox.create({ name: \"one-shot\" }); sandbox.kill()", SLOW, async () => {
  // ---- seed snippet ----
  const sandbox = await Sandbox.create({ name: "one-shot" })

  await sandbox.kill()
  // ---- end of snippet ----

  // "Deletion removes the sandbox entirely; further API calls return 404."
  await rejectsWith(() => sandbox.getInfo(), NotFoundError, "getInfo after kill")
  assert.equal((await Sandbox.list()).find((s) => s.id === sandbox.id), undefined, "a killed sandbox is not listed")
  // "It's idempotent - deleting an already-deleted sandbox is a no-op that swallows the 404."
  await sandbox.kill()
})

test("seed › Kill without an instance: Sandbox.killById(id)", SLOW, async () => {
  const { id } = await Sandbox.create({ name: "one-shot" })

  // ---- seed snippet ("7a3f2b8c-1234-..." is that sandbox's id) ----
  await Sandbox.killById(id)
  // ---- end of snippet ----

  assert.equal((await Sandbox.list()).find((s) => s.id === id), undefined, "a killed sandbox is not listed")
  await rejectsWith(() => Sandbox.connect(id), NotFoundError, "connect after killById")
  // Idempotent as well.
  await Sandbox.killById(id)
})
