// Drives GET /playground in headless Chromium as a person would: pastes the
// token, creates a session, sends one turn as a stream and then one more as
// JSON (which the test's server refuses: its limit is one turn a minute),
// and prints what the page showed as one JSON line for the Rust test
// (tests/tests/e2e/playground.rs) to judge.
//
//   node drive.mjs BASE_URL TOKEN
//   node drive.mjs BASE_URL TOKEN follow
//   node drive.mjs BASE_URL TOKEN files
//
// With `follow`, instead: a slow turn streamed, the page reloaded mid-way
// and the stream resumed with its button, then another turn cancelled with
// its button.
//
// With `files`, instead: a text file uploaded through the file picker,
// ticked and sent with a streamed turn (which reads it through
// `file_read`); a second one uploaded with the session and read by a turn
// sent as JSON that names no file; then the first deleted from the list.
//
// Debian's Chromium (/usr/bin/chromium) and npm's playwright-core, both
// installed by scripts/browser.sh. Every wait is bounded.
import { chromium } from "playwright-core";

const [base, token, mode] = process.argv.slice(2);
if (!base || !token) {
  console.error("usage: node drive.mjs BASE_URL TOKEN");
  process.exit(2);
}
const WAIT = { timeout: 20_000 };
/** The text of the file the `files` run uploads and names in its turn. */
const NOTES = "Quarterly notes: revenue up 12 %, costs flat, hiring paused.";
/** The text of the file it uploads with the session. */
const PLAN = "# Plan\nShip on Friday.";

const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-dev-shm-usage"],
});
try {
  const page = await browser.newPage();
  const failures = [];
  page.on("pageerror", (e) => failures.push(String(e)));
  // Chromium logs every 4xx as a console error; the 429 is expected here.
  page.on("console", (m) => {
    if (m.type() === "error" && !m.text().startsWith("Failed to load resource")) failures.push(m.text());
  });
  const external = [];
  page.on("request", (r) => { if (!r.url().startsWith(base)) external.push(r.url()); });

  await page.goto(base + "/playground", { waitUntil: "load", ...WAIT });
  const title = await page.title();
  await page.fill("#token", token);
  await page.fill("#title", "from the playground");
  await page.click("#create-session");
  await page.waitForFunction(() => document.getElementById("sessions").value !== "", null, WAIT);
  const createdStatus = await page.textContent("#status");
  if (mode === "follow" || mode === "files") {
    const run = mode === "follow" ? await follow(page) : await files(page);
    console.log(JSON.stringify({ title, createdStatus, ...run, failures, external }));
    process.exit(0);
  }

  // Every text the reply shows while it streams, as the page renders it.
  await page.evaluate(() => {
    window.__seen = [];
    const output = document.getElementById("output");
    new MutationObserver(() => window.__seen.push(output.textContent))
      .observe(output, { childList: true, characterData: true, subtree: true });
  });
  await page.fill("#input", "one two three four five six");
  await page.click("#send-stream");
  await page.waitForFunction(
    () => document.getElementById("turn-status").textContent === "completed", null, WAIT);
  const streamed = {
    seen: await page.evaluate(() => window.__seen),
    output: await page.textContent("#output"),
    status: await page.textContent("#status"),
    rateLimit: await page.textContent("#ratelimit"),
  };

  await page.fill("#input", "one more");
  await page.click("#send-json");
  await page.waitForFunction(
    () => document.getElementById("status").textContent.startsWith("429"), null, WAIT);
  const refused = {
    status: await page.textContent("#status"),
    rateLimit: await page.textContent("#ratelimit"),
    problem: JSON.parse(await page.textContent("#problem")),
    turnStatus: await page.textContent("#turn-status"),
  };
  console.log(JSON.stringify({ title, createdStatus, streamed, refused, failures, external }));
} finally {
  await browser.close();
}

/** The follow run: resume after a reload, then cancel. */
async function follow(page) {
  const deltas = () => page.evaluate(() =>
    document.getElementById("body").textContent.split("\n").filter((l) => l.startsWith("turn.delta")).length);
  await page.fill("#input", "one two three four five six seven eight nine ten");
  await page.click("#send-stream");
  await page.waitForFunction(() =>
    document.getElementById("body").textContent.split("turn.delta").length > 3, null, WAIT);
  const beforeReload = await page.textContent("#output");
  await page.reload({ waitUntil: "load", ...WAIT });
  const resumeEnabled = !(await page.isDisabled("#resume"));
  await page.fill("#token", token);
  await page.click("#resume");
  await page.waitForFunction(
    () => document.getElementById("turn-status").textContent === "completed", null, WAIT);
  const resumed = { beforeReload, resumeEnabled, output: await page.textContent("#output"),
    resumedDeltas: await deltas() };

  await page.click("#load-sessions");
  await page.waitForFunction(() => document.getElementById("sessions").value !== "", null, WAIT);
  await page.fill("#input", "one two three four five six seven eight nine ten");
  await page.click("#send-stream");
  await page.waitForFunction(() =>
    document.getElementById("body").textContent.includes("turn.delta"), null, WAIT);
  await page.click("#cancel");
  await page.waitForFunction(
    () => document.getElementById("turn-status").textContent === "cancelled", null, WAIT);
  const cancelled = { output: await page.textContent("#output"),
    status: await page.textContent("#turn-status"),
    cancelDisabledAfter: await page.isDisabled("#cancel") };
  return { resumed, cancelled };
}

/** Waits for `predicate` in the page; on a timeout, says what the page
 *  showed (the HTTP status and the problem) with what was awaited. */
async function settle(page, what, predicate, arg) {
  try {
    await page.waitForFunction(predicate, arg, WAIT);
  } catch (e) {
    const status = await page.textContent("#status");
    const problem = await page.textContent("#problem");
    throw new Error(`waiting for ${what}: ${e.message}\nHTTP ${status}\nproblem: ${problem}`);
  }
}

/** Picks `name` in the file input and clicks "Upload"; returns what the
 *  page showed once the list has `count` files. */
async function upload(page, name, text, count) {
  await page.setInputFiles("#file", { name, mimeType: "text/plain", buffer: Buffer.from(text) });
  await page.click("#upload");
  await settle(page, `${count} file(s) listed`,
    (n) => document.querySelectorAll("#files input.attach").length === n, count);
  return {
    status: await page.textContent("#status"),
    file: JSON.parse(await page.textContent("#body")),
    listed: await page.textContent("#files"),
    pickerCleared: (await page.inputValue("#file")) === "",
  };
}

/** The page's tool lines, one string a line. */
function toolLines(page) {
  return page.evaluate(() =>
    document.getElementById("tools").textContent.split("\n").filter((l) => l !== ""));
}

/** The files run: upload, tick, stream a turn that reads the file; a
 *  session's file read by a JSON turn; a delete. */
async function files(page) {
  const session = await page.inputValue("#sessions");
  // Every turn the page sends, as it went out.
  const sent = [];
  page.on("request", (r) => {
    const path = new URL(r.url()).pathname;
    if (r.method() === "POST" && /\/turns(\/stream)?$/.test(path)) {
      sent.push({ path, idempotencyKey: r.headers()["idempotency-key"] || null,
        body: JSON.parse(r.postData() || "null") });
    }
  });

  const notes = await upload(page, "notes.txt", NOTES, 1);
  const id = notes.file.id;
  await page.check(`#files input.attach[value="${id}"]`);
  // The tool lines as they were when the reply's first text appeared.
  await page.evaluate(() => {
    window.__toolsAtFirstText = null;
    const output = document.getElementById("output");
    new MutationObserver(() => {
      if (window.__toolsAtFirstText === null && output.textContent !== "") {
        window.__toolsAtFirstText = document.getElementById("tools").textContent;
      }
    }).observe(output, { childList: true, characterData: true, subtree: true });
  });
  await page.fill("#input", "What do my notes say?");
  await page.click("#send-stream");
  await settle(page, "the streamed turn to complete",
    () => document.getElementById("turn-status").textContent === "completed");
  const streamed = {
    tools: await toolLines(page),
    toolsAtFirstText: await page.evaluate(() => window.__toolsAtFirstText),
    output: await page.textContent("#output"),
    events: await page.evaluate(() => document.getElementById("body").textContent.split("\n")
      .map((l) => l.split(" ")[0]).filter((e) => e !== "")),
    tickedAfter: await page.locator("#files input.attach:checked").count(),
  };

  await page.check("#file-to-session");
  const plan = await upload(page, "plan.txt", PLAN, 2);
  await page.fill("#input", "What is the plan?");
  await page.click("#send-json");
  await settle(page, "the JSON turn to complete", () =>
    document.getElementById("turn-status").textContent === "completed"
      && document.getElementById("output").textContent.includes("plan.txt"));
  const answered = {
    status: await page.textContent("#status"),
    tools: await toolLines(page),
    output: await page.textContent("#output"),
  };

  await page.click(`#files li:has(input[value="${id}"]) button.delete`);
  await settle(page, "notes.txt gone from the list", (gone) =>
    !document.querySelector(`#files input.attach[value="${gone}"]`), id);
  const deleted = { status: await page.textContent("#status"),
    listed: await page.textContent("#files") };
  return { files: { session, notes, streamed, plan, answered, deleted, sent } };
}
