// Sandbox.create({ fromSnapshot }): a new sandbox starts from a saved
// snapshot, with the memory, processes and files the source had when it was
// saved. The SDK has no call that saves a snapshot (Superserve's snapshots
// come from its own API), so the test saves one with stasis's extension,
// POST /sandboxes/{id}/snapshots, and hands its id to the SDK.

import { test } from "node:test"
import assert from "node:assert/strict"
import { Sandbox, NotFoundError } from "@superserve/sdk"
import { RUN_ID, SLOW, controlPlane, createMinimal, eventually, readCounter, rejectsWith, uniqueName } from "../lib/helpers.mjs"

test("Sandbox.create({ fromSnapshot }) starts from a saved snapshot: files and running processes, independent of the source", SLOW, async (t) => {
  const source = await createMinimal(t, { envVars: { FROM: "source" } })
  await source.files.write("/tmp/v.txt", "v1")
  await source.commands.run("(i=0; while :; do i=$((i+1)); echo $i > /tmp/counter; sleep 0.1; done) >/dev/null 2>&1 &")
  await eventually(async () => (await readCounter(source, "/tmp/counter")) > 0, { what: "the source's counter to start" })

  const snap = await controlPlane("POST", `/sandboxes/${source.id}/snapshots`, { name: uniqueName("snap") })
  assert.match(snap.id, /^[0-9a-f-]{8,}$/i)
  t.after(() => controlPlane("DELETE", `/snapshots/${snap.id}`))
  // The source runs on and changes after the snapshot.
  await source.files.write("/tmp/v.txt", "v2")

  const name = uniqueName("from-snapshot")
  const copy = await Sandbox.create({ name, fromSnapshot: snap.id, metadata: { suite: RUN_ID, role: "copy" } })
  t.after(() => copy.kill())
  assert.notEqual(copy.id, source.id)
  assert.equal(copy.name, name)
  assert.equal(copy.status, "active")
  assert.deepEqual(copy.metadata, { suite: RUN_ID, role: "copy" })

  assert.equal(await copy.files.readText("/tmp/v.txt"), "v1", "the copy has the files as they were saved")
  assert.equal((await copy.commands.run('echo "$FROM"')).stdout, "source\n", "and the source's environment")
  // The counter loop was saved running and counts on in the copy.
  const start = await readCounter(copy, "/tmp/counter")
  await eventually(async () => (await readCounter(copy, "/tmp/counter")) > start, { what: "the copy's counter to advance" })

  // The two are independent.
  await copy.files.write("/tmp/v.txt", "copy")
  assert.equal(await source.files.readText("/tmp/v.txt"), "v2")
  await copy.kill()
  assert.equal((await source.commands.run("cat /tmp/v.txt")).stdout, "v2")
})

test("Sandbox.create({ fromSnapshot }) of an unknown snapshot is a NotFoundError", SLOW, async () => {
  await rejectsWith(
    () => Sandbox.create({ name: uniqueName("from-missing"), fromSnapshot: "00000000-0000-4000-8000-000000000000" }),
    NotFoundError,
    "create from an unknown snapshot",
  )
})
