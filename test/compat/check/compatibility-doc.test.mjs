// docs/COMPATIBILITY.md must say what the suite shows. run.sh runs this file
// after a full run of tests/*.test.mjs, with STASIS_COMPAT_RESULTS naming
// the results lib/results-reporter.mjs recorded, and it fails when:
//
//   - a row of the @superserve/sdk tables names a test that does not exist,
//     or whose outcome is not the row's status: a ✅ row's tests passed, a ⏭
//     row names at least one test skipped for being unimplemented, a ➖ row's
//     tests (if any) passed, a ◯ row names none;
//   - a test ran that no row names, or a skipped test is named by no ⏭ row;
//   - a method or export of the pinned SDK has no row.
//
// A row names a test as `file.test.mjs › test name` (describe blocks
// included, as in the spec output); a name ending in " …" stands for every
// test that starts with it.

import { test } from "node:test"
import assert from "node:assert/strict"
import { readFileSync, readdirSync } from "node:fs"
import { fileURLToPath } from "node:url"
import * as sdk from "@superserve/sdk"

const DOC = fileURLToPath(new URL("../../../docs/COMPATIBILITY.md", import.meta.url))
const TESTS_DIR = fileURLToPath(new URL("../tests/", import.meta.url))
const SECTION = /^## `@superserve\/sdk` /
const STATUSES = ["✅", "⏭", "➖", "◯"]
const CITATION = /`([\w.-]+\.test\.mjs) › ([^`]+)`/g

/** The rows of every table in the @superserve/sdk section of the doc. */
function parseRows(markdown) {
  const lines = markdown.split("\n")
  const start = lines.findIndex((l) => SECTION.test(l))
  assert.ok(start >= 0, "docs/COMPATIBILITY.md has no \"## `@superserve/sdk` …\" section")
  const rows = []
  let columns // the current table's header cells
  for (let i = start + 1; i < lines.length && !/^## /.test(lines[i]); i++) {
    const line = lines[i].trim()
    if (!line.startsWith("|")) {
      columns = undefined
      continue
    }
    const cells = line.slice(1, line.endsWith("|") ? -1 : undefined).split(/(?<!\\)\|/).map((c) => c.trim())
    if (columns === undefined) {
      columns = cells
      const where = `the table at docs/COMPATIBILITY.md:${i + 1}`
      assert.ok(columns.includes("stasis"), `${where} has no "stasis" column`)
      assert.ok(columns.includes("Test"), `${where} has no "Test" column`)
      continue
    }
    if (cells.every((c) => /^:?-+:?$/.test(c))) continue // the separator
    const cell = (name) => cells[columns.indexOf(name)] ?? ""
    const status = cell("stasis")
    rows.push({
      line: i + 1,
      what: cells[0],
      statuses: STATUSES.filter((s) => status.includes(s)),
      citations: [...cell("Test").matchAll(CITATION)].map(([, file, name]) => ({ file, name })),
    })
  }
  return rows
}

function loadResults() {
  const path = process.env.STASIS_COMPAT_RESULTS
  assert.ok(path, "STASIS_COMPAT_RESULTS is not set: run this check through `npm test`, which sets it after a full run")
  return readFileSync(path, "utf8")
    .split("\n")
    .filter(Boolean)
    .map((l) => JSON.parse(l))
}

function matches(citation, result) {
  if (citation.file !== result.file) return false
  return citation.name.endsWith(" …") ? result.name.startsWith(citation.name.slice(0, -2)) : result.name === citation.name
}

const rows = parseRows(readFileSync(DOC, "utf8"))
const label = (row) => `docs/COMPATIBILITY.md:${row.line} (${row.what.length > 60 ? row.what.slice(0, 59) + "…" : row.what})`

test("the results are of a full run of the suite", () => {
  const results = loadResults()
  const files = readdirSync(TESTS_DIR).filter((f) => f.endsWith(".test.mjs")).sort()
  assert.deepEqual([...new Set(results.map((r) => r.file))].sort(), files)
})

test("every row of the @superserve/sdk tables has one status and names tests with that outcome", () => {
  const results = loadResults()
  const problems = []
  for (const row of rows) {
    if (row.statuses.length !== 1) {
      problems.push(`${label(row)}: the stasis cell must hold exactly one of ${STATUSES.join(" ")}, it has ${row.statuses.join(" ") || "none"}`)
      continue
    }
    const [status] = row.statuses
    const named = []
    for (const c of row.citations) {
      const found = results.filter((r) => matches(c, r))
      if (found.length === 0) problems.push(`${label(row)}: no test \`${c.file} › ${c.name}\` ran`)
      named.push(...found)
    }
    const not = (s) => named.filter((r) => r.status !== s).map((r) => `\`${r.file} › ${r.name}\` (${r.status})`)
    switch (status) {
      case "✅":
        if (row.citations.length === 0) problems.push(`${label(row)}: ✅ but names no test`)
        for (const r of not("pass")) problems.push(`${label(row)}: ✅ but ${r} did not pass`)
        break
      case "⏭":
        if (!named.some((r) => r.status === "skip" && r.reason)) problems.push(`${label(row)}: ⏭ but names no test skipped with a reason`)
        for (const r of named.filter((r) => r.status === "fail" || r.status === "todo")) {
          problems.push(`${label(row)}: \`${r.file} › ${r.name}\` is ${r.status}`)
        }
        break
      case "➖":
        for (const r of not("pass")) problems.push(`${label(row)}: ➖ but ${r} did not pass`)
        break
      case "◯":
        if (row.citations.length > 0) problems.push(`${label(row)}: ◯ (not provoked by the suite) but names tests`)
        break
    }
  }
  assert.deepEqual(problems, [])
})

test("every test the suite ran is named by a row, and every skipped one by a ⏭ row", () => {
  const problems = []
  for (const r of loadResults()) {
    const naming = rows.filter((row) => row.citations.some((c) => matches(c, r)))
    if (naming.length === 0) {
      problems.push(`\`${r.file} › ${r.name}\` (${r.status}) is named by no row of docs/COMPATIBILITY.md`)
    } else if (r.status === "skip" && !naming.some((row) => row.statuses.includes("⏭"))) {
      problems.push(`\`${r.file} › ${r.name}\` is skipped but named by no ⏭ row`)
    }
  }
  assert.deepEqual(problems, [])
})

/** What the doc must name for the pinned SDK: its exports and every method. */
function sdkSurface() {
  const names = []
  const methods = (prefix, proto) =>
    Object.getOwnPropertyNames(proto)
      .filter((n) => n !== "constructor" && !n.startsWith("_") && typeof Object.getOwnPropertyDescriptor(proto, n).value === "function")
      .map((n) => `${prefix}.${n}`)
  for (const [name, value] of Object.entries(sdk)) {
    if (typeof value !== "function" || !/^[A-Z]/.test(name) || /Error$/.test(name)) {
      names.push(name) // functions, constants and the error classes
      continue
    }
    const statics = Object.getOwnPropertyNames(value).filter((n) => typeof value[n] === "function")
    names.push(...statics.map((n) => `${name}.${n}`))
    names.push(...methods(name[0].toLowerCase() + name.slice(1), value.prototype))
  }
  // commands and files are objects of each sandbox; their classes are not exported.
  const sandbox = new sdk.Sandbox({ id: "offline", name: "offline", status: "active", metadata: {} }, "token", { sandboxHost: "sandbox.invalid" })
  names.push(...methods("sandbox.commands", Object.getPrototypeOf(sandbox.commands)))
  names.push(...methods("sandbox.files", Object.getPrototypeOf(sandbox.files)))
  return names.sort()
}

test("every export and method of the pinned SDK has a row", () => {
  const spans = rows.flatMap((row) => [...row.what.matchAll(/`([^`]+)`/g)].map((m) => m[1]))
  const named = (name) => {
    const re = new RegExp(`(^|[^\\w.])${name.replaceAll(".", "\\.")}(?![\\w])`)
    return spans.some((s) => re.test(s))
  }
  const surface = sdkSurface()
  assert.ok(surface.includes("Template.create") && surface.includes("sandbox.commands.run"), "the SDK's surface was read")
  assert.deepEqual(surface.filter((n) => !named(n)), [], "named in the first column of no row (as `Class.method`, `instance.method`)")
})
