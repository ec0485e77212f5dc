// E2B's network settings on stasis's egress rules, and autoResume. stasisd
// runs with --egress deny and no upstream resolver (../compat/lib/suite.sh):
// every connection tried here is refused by stasisd itself, and the network
// log (read through the stasis API, which E2B has no call for) names the
// rule that refused it, which shows that E2B's settings became those rules.
import { test } from "node:test"
import assert from "node:assert/strict"
import { Sandbox, SandboxError } from "e2b"
import { newSandbox, eventually } from "../lib/helpers.mjs"

/** The rule stasis matched for the sandbox's connections to ip, newest first. */
async function rulesFor(id, ip) {
  const res = await fetch(`${process.env.STASIS_URL}/sandboxes/${id}/network`, {
    headers: { "X-API-Key": process.env.STASIS_API_KEY },
  })
  assert.equal(res.status, 200)
  return (await res.json()).data.filter((e) => e.dst_ip === ip).map((e) => e.match_rule)
}

/** Tries a TCP connection from the sandbox to ip:80 and returns the rule that decided it. */
async function tryConnect(sbx, ip) {
  await sbx.commands.run(`curl -s -m 5 http://${ip}/ || true`)
  const [rule] = await eventually(async () => {
    const rules = await rulesFor(sbx.sandboxId, ip)
    return rules.length > 0 && rules
  })
  return rule
}

test("Sandbox.create with network allowOut/denyOut and allowInternetAccess: false become stasis's egress rules", async () => {
  const sbx = await newSandbox({
    network: { allowOut: ["198.51.100.0/24", "api.example.test"], denyOut: ["203.0.113.0/24"] },
  })
  const info = await sbx.getInfo()
  assert.deepEqual(info.network.allowOut, ["198.51.100.0/24", "api.example.test"])
  assert.deepEqual(info.network.denyOut, ["203.0.113.0/24"])
  assert.equal(await tryConnect(sbx, "203.0.113.21"), "deny_out:203.0.113.0/24")

  const offline = await newSandbox({ allowInternetAccess: false })
  const offInfo = await offline.getInfo()
  assert.equal(offInfo.allowInternetAccess, false)
  assert.deepEqual(offInfo.network.denyOut, ["0.0.0.0/0"])
  assert.equal(await tryConnect(offline, "192.0.2.33"), "deny_out:0.0.0.0/0")

  // Bad rules are refused, naming the entry, and nothing is created.
  await assert.rejects(Sandbox.create("base", { network: { denyOut: ["evil.example.test"] } }), (e) => {
    assert.ok(e instanceof SandboxError)
    assert.match(e.message, /400.*evil\.example\.test/)
    return true
  })
})

test("sandbox.updateNetwork, Sandbox.updateNetwork: replace the rules of a running sandbox", async () => {
  const sbx = await newSandbox()
  assert.equal((await sbx.getInfo()).network, undefined)
  await sbx.updateNetwork({ denyOut: ["192.0.2.0/24"] })
  assert.deepEqual((await sbx.getInfo()).network.denyOut, ["192.0.2.0/24"])
  assert.equal(await tryConnect(sbx, "192.0.2.44"), "deny_out:192.0.2.0/24")

  await Sandbox.updateNetwork(sbx.sandboxId, { allowInternetAccess: false, allowOut: ["198.51.100.7"] })
  const info = await sbx.getInfo()
  assert.deepEqual(info.network.allowOut, ["198.51.100.7"])
  assert.deepEqual(info.network.denyOut, ["0.0.0.0/0"])
  assert.equal(await tryConnect(sbx, "203.0.113.55"), "deny_out:0.0.0.0/0")

  // Omitted fields clear the rules: the server's default decides again.
  await sbx.updateNetwork({})
  assert.equal((await sbx.getInfo()).network, undefined)
  assert.equal(await tryConnect(sbx, "203.0.113.66"), "default")
  await assert.rejects(Sandbox.updateNetwork("nosuchsandbox", { denyOut: ["192.0.2.0/24"] }), /not found/i)
})

test("Sandbox.create with lifecycle autoResume false: traffic does not resume a paused sandbox, Sandbox.connect does", async () => {
  const sbx = await newSandbox({ lifecycle: { onTimeout: "pause", autoResume: false } })
  assert.deepEqual((await sbx.getInfo()).lifecycle, { onTimeout: "pause", autoResume: false })
  await sbx.files.write("/home/user/kept.txt", "still here")
  assert.equal(await sbx.pause(), true)

  await assert.rejects(sbx.commands.run("echo woke"))
  await assert.rejects(sbx.files.read("/home/user/kept.txt"))
  assert.equal(await sbx.isRunning(), false)
  assert.equal((await sbx.getInfo()).state, "paused", "traffic resumed a sandbox whose autoResume is off")

  const again = await Sandbox.connect(sbx.sandboxId)
  assert.equal(await again.files.read("/home/user/kept.txt"), "still here")
  assert.equal((await again.commands.run("echo woke")).stdout, "woke\n")
})

test("Sandbox.create with lifecycle autoResume true: traffic resumes a paused sandbox", async () => {
  const sbx = await newSandbox({ lifecycle: { onTimeout: "pause", autoResume: true } })
  assert.equal((await sbx.getInfo()).lifecycle.autoResume, true)
  assert.equal(await sbx.pause(), true)
  assert.equal((await sbx.commands.run("echo woke")).stdout, "woke\n")
  assert.equal((await sbx.getInfo()).state, "running")
})
