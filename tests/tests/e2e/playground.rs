//! The playground page in a real browser: headless Chromium, driven by
//! `tests/playground/drive.mjs` (playwright-core): a streamed turn and a
//! `429`; a resume after a reload and a cancel; an upload whose file a turn
//! reads. Needs `/usr/bin/chromium` and the npm package, which
//! `scripts/browser.sh` installs (`scripts/test.sh` runs it first).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use pantheon_tests::process::wait_bounded;
use pantheon_tests::{Backend, TestApp, spawn_app_with};
use serde_json::Value;

/// The longest the browser run may take.
const BROWSER_TIMEOUT: Duration = Duration::from_secs(90);

/// Runs `drive.mjs` against `app` as `token` (with `mode`, when given) and
/// returns what it printed of the page.
async fn drive(app: &TestApp, token: &str, mode: Option<&str>) -> Value {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("playground");
    assert!(
        Path::new("/usr/bin/chromium").exists()
            && dir.join("node_modules/playwright-core/package.json").exists(),
        "Chromium or playwright-core is missing: run scripts/browser.sh (scripts/test.sh does)"
    );
    let out = std::env::temp_dir().join(format!("pantheon-playground-{}", uuid::Uuid::new_v4()));
    let mut child = Command::new("node")
        .arg("drive.mjs")
        .arg(&app.address)
        .arg(token)
        .args(mode)
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("node runs");
    let status = wait_bounded(&mut child, BROWSER_TIMEOUT, "the browser run").await;
    let printed = std::fs::read_to_string(&out).unwrap_or_default();
    let _ = std::fs::remove_file(&out);
    assert!(status.success(), "drive.mjs failed ({status}): {printed}");
    let page: Value = serde_json::from_str(printed.trim()).unwrap();
    assert_eq!(page["failures"], serde_json::json!([]), "no script error on the page");
    assert_eq!(page["external"], serde_json::json!([]), "nothing loaded from elsewhere");
    page
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_playground_streams_a_turn_and_shows_a_429_in_a_real_browser() {
    let app = spawn_app_with(Backend::Sqlite, |s| {
        s.rate_limit.per_minute = 1;
        // Chunks far enough apart that the page renders the reply growing.
        s.provider.builtin.chunk_delay_ms = 150;
    })
    .await;
    let (_, token) = app.new_user();
    let page = drive(&app, &token, None).await;

    assert_eq!(page["title"], "Pantheon playground");
    assert!(page["createdStatus"].as_str().unwrap().starts_with("201"));

    // The streamed reply appeared a chunk at a time, each text a prefix of
    // the final one, before the whole.
    let final_output = "You said: one two three four five six";
    assert_eq!(page["streamed"]["output"], final_output);
    let seen: Vec<&str> = page["streamed"]["seen"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .filter(|s| !s.is_empty())
        .collect();
    let partial: Vec<&&str> = seen.iter().filter(|s| s.len() < final_output.len()).collect();
    assert!(partial.len() >= 2, "the reply grew as it streamed: {seen:?}");
    assert!(partial.iter().all(|s| final_output.starts_with(**s)), "{seen:?}");
    assert!(page["streamed"]["status"].as_str().unwrap().starts_with("200"));
    let admitted = page["streamed"]["rateLimit"].as_str().unwrap();
    assert!(admitted.contains("ratelimit-policy: \"minute\";q=1;w=60"), "{admitted}");
    assert!(admitted.contains("ratelimit: \"minute\";r=0"), "{admitted}");

    // The second turn is over the limit: the page shows the 429 problem and
    // its headers, and nothing was written.
    let refused = &page["refused"];
    assert!(refused["status"].as_str().unwrap().starts_with("429"), "{refused}");
    assert_eq!(refused["problem"]["code"], "rate_limited");
    assert_eq!(refused["problem"]["status"], 429);
    let headers = refused["rateLimit"].as_str().unwrap();
    assert!(headers.contains("retry-after: "), "{headers}");
    assert!(headers.contains("ratelimit: \"minute\";r=0"), "{headers}");
    assert!(refused["turnStatus"].as_str().unwrap().starts_with("not started"));
    assert_eq!(app.count("turns").await, 1, "the refused turn wrote nothing");
    assert_eq!(app.count("sessions").await, 1);
}

/// The page keeps the stream it reads: after a reload its "Resume" button
/// continues the turn where the page was cut, and "Cancel" stops a turn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_playground_resumes_a_stream_after_a_reload_and_cancels_a_turn() {
    let app = spawn_app_with(Backend::Sqlite, |s| s.provider.builtin.chunk_delay_ms = 150).await;
    let (_, token) = app.new_user();
    let page = drive(&app, &token, Some("follow")).await;

    let whole = "You said: one two three four five six seven eight nine ten";
    let resumed = &page["resumed"];
    assert_eq!(resumed["resumeEnabled"], true, "the reload kept the stream to resume");
    let before = resumed["beforeReload"].as_str().unwrap();
    assert!(!before.is_empty() && whole.starts_with(before), "{resumed}");
    assert_eq!(resumed["output"], whole);
    assert!(resumed["resumedDeltas"].as_u64().unwrap() >= 1, "deltas came after the reload");

    let cancelled = &page["cancelled"];
    assert_eq!(cancelled["status"], "cancelled");
    assert_eq!(cancelled["cancelDisabledAfter"], true);
    let output = cancelled["output"].as_str().unwrap();
    assert!(output.len() < whole.len() && whole.starts_with(output), "{cancelled}");
    assert_eq!(app.count("turns").await, 2);
}

/// What `drive.mjs files` uploads and names in its streamed turn.
const NOTES: &str = "Quarterly notes: revenue up 12 %, costs flat, hiring paused.";

/// The page's files: one uploaded through its picker, ticked and sent with
/// a streamed turn, which shows the `file_read` call and result before the
/// reply reads `Read N bytes of …`; one uploaded with the session, read by a
/// turn sent as JSON that names no file; a delete from the list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_playground_uploads_a_file_and_a_turn_reads_it_in_a_real_browser() {
    let app = spawn_app_with(Backend::Sqlite, |s| s.provider.builtin.chunk_delay_ms = 50).await;
    let (_, token) = app.new_user();
    let page = drive(&app, &token, Some("files")).await;
    let files = &page["files"];
    let session = files["session"].as_str().unwrap();

    // The picked file went up as `multipart/form-data`, without a session.
    let notes = &files["notes"];
    assert!(notes["status"].as_str().unwrap().starts_with("201"), "{notes}");
    let file = &notes["file"];
    assert_eq!(file["filename"], "notes.txt");
    assert_eq!(file["content_type"], "text/plain");
    assert_eq!(file["bytes"], NOTES.len());
    assert_eq!(file["session_id"], Value::Null);
    assert!(notes["listed"].as_str().unwrap().contains("notes.txt"), "{notes}");
    assert_eq!(notes["pickerCleared"], true);
    let id = file["id"].as_str().unwrap();

    // The streamed turn named the ticked file, and the page showed its call
    // and result (from the stream's events, before the reply's first text).
    let sent = files["sent"].as_array().unwrap();
    assert_eq!(sent.len(), 2, "{sent:?}");
    assert!(sent[0]["path"].as_str().unwrap().ends_with("/turns/stream"), "{sent:?}");
    assert_eq!(sent[0]["body"]["files"], serde_json::json!([id]));
    let streamed = &files["streamed"];
    let tools: Vec<&str> =
        streamed["tools"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert_eq!(tools.len(), 2, "a line per call and per result: {tools:?}");
    assert!(tools[0].starts_with("call   file_read notes.txt"), "{tools:?}");
    assert_eq!(tools[1], format!("result file_read notes.txt → {} bytes", NOTES.len()));
    let at_first_text = streamed["toolsAtFirstText"].as_str().unwrap();
    assert_eq!(at_first_text, format!("{}\n{}\n", tools[0], tools[1]), "{streamed}");
    let events: Vec<&str> =
        streamed["events"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert_eq!(&events[..3], ["turn.created", "turn.tool_call", "turn.tool_result"], "{events:?}");
    let expected = format!("Read {} bytes of notes.txt: \"{}\"", NOTES.len(), &NOTES[..60]);
    assert!(streamed["output"].as_str().unwrap().starts_with(&expected), "{streamed}");
    assert_eq!(streamed["tickedAfter"], 0, "a ticked file goes with the next turn only");

    // A file uploaded with the session is read by the session's next turn,
    // sent as JSON and naming no file; its recorded calls are shown.
    let plan = &files["plan"];
    assert!(plan["status"].as_str().unwrap().starts_with("201"), "{plan}");
    assert_eq!(plan["file"]["session_id"], session);
    assert!(sent[1]["path"].as_str().unwrap().ends_with("/turns"), "{sent:?}");
    assert!(sent[1]["body"].get("files").is_none(), "{sent:?}");
    let keys = (sent[0]["idempotencyKey"].as_str(), sent[1]["idempotencyKey"].as_str());
    assert!(matches!(keys, (Some(a), Some(b)) if a != b), "a fresh key per send: {sent:?}");
    let answered = &files["answered"];
    assert!(answered["status"].as_str().unwrap().starts_with("201"), "{answered}");
    let tools: Vec<&str> =
        answered["tools"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert_eq!(tools.len(), 2, "{tools:?}");
    assert!(tools[0].starts_with("call   file_read plan.txt"), "{tools:?}");
    assert_eq!(tools[1], "result file_read plan.txt → 22 bytes");
    let output = answered["output"].as_str().unwrap();
    assert!(
        output.starts_with("Read 22 bytes of plan.txt: \"# Plan Ship on Friday.\""),
        "{output}"
    );

    // "Delete" on the first file removed it.
    let deleted = &files["deleted"];
    assert!(deleted["status"].as_str().unwrap().starts_with("204"), "{deleted}");
    let listed = deleted["listed"].as_str().unwrap();
    assert!(!listed.contains("notes.txt") && listed.contains("plan.txt"), "{listed}");
    assert_eq!(app.count("uploaded_files").await, 1);
    assert_eq!(app.count("turns").await, 2);
}
