// Per-sandbox access tokens. resume() rotates the token; the SDK swaps the new
// one in, so nothing changes for the caller. Another SDK instance still holding
// the pre-resume token gets a 401 on its next data-plane call and recovers by
// itself through POST /sandboxes/{id}/activate.
//
// The tests peek at the SDK's private `_accessToken` (read only) to prove the
// rotation and the recovery really happened rather than being skipped.

import { test } from "node:test"
import assert from "node:assert/strict"
import { Sandbox } from "@superserve/sdk"
import { SLOW, STASIS_URL, createMinimal, unzip } from "../lib/helpers.mjs"

/** A raw buffered exec with a given token: the status stasisd answers. */
async function execStatus(id, token) {
  const res = await fetch(`${STASIS_URL}/exec`, {
    method: "POST",
    headers: { "Content-Type": "application/json", "X-Superserve-Sandbox-Id": id, "X-Access-Token": token },
    body: JSON.stringify({ command: "true" }),
  })
  await res.arrayBuffer()
  return res.status
}

test("resume() rotates the access token, invisibly to the SDK user", SLOW, async (t) => {
  const sandbox = await createMinimal(t)
  await sandbox.files.write("/tmp/before.txt", "before")
  const oldToken = sandbox._accessToken

  await sandbox.pause()
  await sandbox.resume()

  assert.notEqual(sandbox._accessToken, oldToken, "resume() returned a new token and the SDK holds it")
  assert.equal(await execStatus(sandbox.id, oldToken), 401, "the pre-resume token is revoked")
  assert.equal(await execStatus(sandbox.id, sandbox._accessToken), 200, "the new token works")

  // Same code as before the resume: commands and files just work.
  assert.equal(await sandbox.files.readText("/tmp/before.txt"), "before")
  await sandbox.files.write("/tmp/after.txt", "after")
  assert.equal((await sandbox.commands.run("cat /tmp/before.txt /tmp/after.txt")).stdout, "beforeafter")
  const out = []
  await sandbox.commands.run("echo streamed", { onStdout: (d) => out.push(d) })
  assert.equal(out.join(""), "streamed\n")
  const session = await sandbox.commands.spawn("cat")
  session.stdin.write("spawned")
  session.stdin.close()
  assert.equal((await session.wait()).stdout, "spawned")
})

for (const [what, call] of [
  ["commands.run (buffered)", async (s) => (await s.commands.run("echo recovered")).stdout],
  ["commands.run (streamed)", async (s) => (await s.commands.run("echo recovered", { onStdout: () => {} })).stdout],
  ["commands.spawn", async (s) => (await (await s.commands.spawn("echo recovered")).wait()).stdout],
  ["files.write + files.readText", async (s) => {
    await s.files.write("/tmp/recovered.txt", "recovered\n")
    return s.files.readText("/tmp/recovered.txt")
  }],
  ["files.read", async (s) => new TextDecoder().decode(await s.files.read("/tmp/r.txt"))],
  ["files.downloadDir", async (s) => unzip(await s.files.downloadDir("/tmp")).get("tmp/r.txt")?.data.toString()],
]) {
  test(`a second SDK instance with the pre-resume token recovers via activate: ${what}`, SLOW, async (t) => {
    const sandbox = await createMinimal(t)
    await sandbox.files.write("/tmp/r.txt", "recovered\n")
    const other = await Sandbox.connect(sandbox.id) // a second SDK instance, its own token
    const stale = other._accessToken
    assert.equal((await other.commands.run("echo ok")).stdout, "ok\n", "the second instance works before the resume")

    await sandbox.pause()
    await sandbox.resume() // rotates: other's token is now stale
    assert.equal(await execStatus(sandbox.id, stale), 401, "the second instance's token was revoked by resume()")

    assert.equal(await call(other), "recovered\n")
    assert.notEqual(other._accessToken, stale, "the second instance fetched a fresh token through activate")
    // The first instance is unaffected by the second one's activate.
    assert.equal((await sandbox.commands.run("echo still-ok")).stdout, "still-ok\n")
  })
}

test("a stale token on a paused sandbox: the SDK activates (resuming it) and retries", SLOW, async (t) => {
  const sandbox = await createMinimal(t)
  const other = await Sandbox.connect(sandbox.id)
  const stale = other._accessToken
  await sandbox.pause()
  await sandbox.resume()
  await sandbox.pause()

  assert.equal((await other.commands.run("echo back")).stdout, "back\n")
  assert.notEqual(other._accessToken, stale)
  assert.equal((await sandbox.getInfo()).status, "active")
  assert.equal((await sandbox.commands.run("echo first-instance")).stdout, "first-instance\n")
})
