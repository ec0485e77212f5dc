// Deletes every template and sandbox the suite's API key can see (run.sh
// calls it after the tests, against the stasisd it started for them). Plain
// fetch, not the SDK, so cleanup does not depend on what is being tested.
// Builds still running are cancelled and waited for first: each runs in a
// sandbox of its own, which is destroyed when the build ends. Exits 1 if
// anything could not be deleted.

const base = process.env.STASIS_URL
const key = process.env.STASIS_API_KEY
const headers = { "X-API-Key": key }
const FINAL = new Set(["ready", "failed", "cancelled"])

async function call(method, path) {
  const res = await fetch(base + path, { method, headers, signal: AbortSignal.timeout(120_000) })
  const text = await res.text()
  return { status: res.status, body: text ? JSON.parse(text) : undefined }
}

let failed = 0
function problem(what, res) {
  failed++
  console.error(`cleanup: ${what} answered ${res.status}: ${JSON.stringify(res.body)}`)
}

const templates = await call("GET", "/templates")
if (templates.status !== 200) problem("GET /templates", templates)
for (const tpl of templates.body ?? []) {
  const builds = await call("GET", `/templates/${tpl.id}/builds`)
  if (builds.status !== 200) problem(`GET /templates/${tpl.id}/builds`, builds)
  for (const b of (builds.body ?? []).filter((b) => !FINAL.has(b.status))) {
    await call("DELETE", `/templates/${tpl.id}/builds/${b.id}`)
    const deadline = Date.now() + 120_000
    for (;;) {
      const got = await call("GET", `/templates/${tpl.id}/builds/${b.id}`)
      if (got.status !== 200 || FINAL.has(got.body.status)) break
      if (Date.now() > deadline) {
        problem(`build ${b.id} of template ${tpl.name} still ${got.body.status} 120s after cancelling it; GET`, got)
        break
      }
      await new Promise((r) => setTimeout(r, 200))
    }
  }
  const del = await call("DELETE", `/templates/${tpl.id}`)
  if (del.status === 204 || del.status === 200 || del.status === 404) {
    console.log(`cleanup: deleted leftover template ${tpl.id} (${tpl.name}, ${tpl.status})`)
  } else {
    problem(`DELETE /templates/${tpl.id}`, del)
  }
}

const list = await call("GET", "/sandboxes")
if (list.status !== 200) {
  problem("GET /sandboxes", list)
  process.exit(1)
}
for (const sb of list.body) {
  const del = await call("DELETE", `/sandboxes/${sb.id}`)
  if (del.status === 204 || del.status === 200 || del.status === 404) {
    console.log(`cleanup: deleted leftover sandbox ${sb.id} (${sb.name}, ${sb.status})`)
  } else {
    problem(`DELETE /sandboxes/${sb.id}`, del)
  }
}
process.exit(failed ? 1 : 0)
