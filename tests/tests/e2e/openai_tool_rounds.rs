//! Tool use against the fake upstream, at the provider: the scripted
//! rounds stream whole calls through the `openai` provider, and each next
//! request carries the tools, the files, and every earlier round's calls
//! and results in the chat format.

use futures::StreamExt;
use pantheon_domain::ports::{ModelProvider, ReplyEvent, ReplyRequest};
use pantheon_domain::tool::{FILE_READ, FileRef, ToolCall, ToolResult, ToolRound, ToolSpec};
use pantheon_domain::{FileId, FinishReason, ProviderError, SessionId};
use pantheon_infrastructure::provider::OpenAiProvider;
use pantheon_infrastructure::settings::OpenAiProviderSettings;
use pantheon_infrastructure::tools::FILE_READ_SCHEMA;
use pantheon_tests::fake_openai::{FakeOpenAi, Round, reply};
use serde_json::{Value, json};

fn provider(fake: &FakeOpenAi) -> OpenAiProvider {
    let settings = OpenAiProviderSettings {
        base_url: Some(fake.base_url.clone()),
        model: Some("fake-model".into()),
        ..Default::default()
    };
    OpenAiProvider::new(&settings).unwrap()
}

fn request(files: &[FileRef], rounds: Vec<ToolRound>) -> ReplyRequest {
    ReplyRequest {
        session_id: SessionId::new(),
        input: "What do the files say?".into(),
        history: Vec::new(),
        max_output_tokens: 256,
        files: files.to_vec(),
        tools: vec![ToolSpec {
            name: FILE_READ,
            description: "Reads a file.",
            parameters: FILE_READ_SCHEMA,
        }],
        rounds,
    }
}

async fn events(
    provider: &OpenAiProvider,
    request: ReplyRequest,
) -> Result<Vec<ReplyEvent>, ProviderError> {
    let stream = provider.reply(request).await?;
    stream.collect::<Vec<_>>().await.into_iter().collect()
}

fn file(name: &str) -> FileRef {
    FileRef {
        id: FileId::new(),
        filename: name.into(),
        content_type: "text/plain".into(),
        bytes: 5,
    }
}

fn calls(events: &[ReplyEvent]) -> Vec<ToolCall> {
    let calls = events.iter().filter_map(|e| match e {
        ReplyEvent::ToolCall(call) => Some(call.clone()),
        _ => None,
    });
    calls.collect()
}

#[tokio::test]
async fn scripted_rounds_stream_whole_calls_and_each_request_sends_the_rounds_back() {
    let (a, b) = (file("a.txt"), file("b.txt"));
    let read_a = json!({"file_id": a.id, "offset": 0, "length": 4096}).to_string();
    let read_b = json!({"file_id": b.id}).to_string();
    let fake = FakeOpenAi::rounds(vec![
        Round::calls(&[(FILE_READ, &read_a), (FILE_READ, &read_b)]),
        Round::calls(&[(FILE_READ, "{\"file_id\": \"élan\"}")]),
        Round::text(&["Both", " say hello."]),
    ])
    .await;
    let provider = provider(&fake);
    let files = [a.clone(), b.clone()];

    let first = events(&provider, request(&files, Vec::new())).await.unwrap();
    let expected = vec![
        ToolCall { id: "call_0_0".into(), name: FILE_READ.into(), arguments: read_a.clone() },
        ToolCall { id: "call_0_1".into(), name: FILE_READ.into(), arguments: read_b.clone() },
    ];
    assert_eq!(calls(&first), expected);
    assert!(matches!(
        first.last(),
        Some(ReplyEvent::Finished { finish_reason: FinishReason::Stop, usage: Some(_) })
    ));

    let result = |text: &str| ToolResult {
        content: json!({ "text": text }).to_string(),
        file: None,
        bytes: text.len() as u64,
        error: None,
    };
    let round_1 = ToolRound {
        text: String::new(),
        calls: vec![(expected[0].clone(), result("hello")), (expected[1].clone(), result("hello"))],
    };
    let second = events(&provider, request(&files, vec![round_1.clone()])).await.unwrap();
    let again = calls(&second);
    assert_eq!(again.len(), 1);
    assert_eq!(
        (again[0].id.as_str(), again[0].arguments.as_str()),
        ("call_1_0", "{\"file_id\": \"élan\"}")
    );
    let refused = ToolResult {
        content: json!({"error": "no such file among this turn's files"}).to_string(),
        file: None,
        bytes: 0,
        error: Some("no such file among this turn's files".into()),
    };
    let round_2 = ToolRound { text: String::new(), calls: vec![(again[0].clone(), refused)] };
    let third = events(&provider, request(&files, vec![round_1, round_2])).await.unwrap();
    let text: String = third
        .iter()
        .filter_map(|e| match e {
            ReplyEvent::Delta(d) => Some(d.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(text, "Both say hello.");
    assert_eq!(calls(&third), Vec::new());

    assert_eq!(fake.calls(), 3);
    let seen = fake.seen();
    for request in &seen {
        assert_eq!(request.tool_names(), [FILE_READ]);
        let schema: Value = serde_json::from_str(FILE_READ_SCHEMA).unwrap();
        assert_eq!(request.tools()[0]["function"]["parameters"], schema);
        assert_eq!(request.input(), "What do the files say?");
        let listing = &request.messages()[0];
        assert_eq!(listing.0, "system");
        assert!(
            listing.1.contains(&a.id.to_string()) && listing.1.contains("b.txt"),
            "{listing:?}"
        );
    }
    assert_eq!(seen[0].tool_calls(), Vec::new());
    assert_eq!(seen[0].tool_results(), Vec::new());
    let sent_calls: Vec<String> = seen[2].tool_calls().into_iter().map(|(id, _, _)| id).collect();
    assert_eq!(sent_calls, ["call_0_0", "call_0_1", "call_1_0"]);
    let results = seen[2].tool_results();
    assert_eq!(results.len(), 3);
    assert_eq!(results[0], ("call_0_0".into(), json!({"text": "hello"}).to_string()));
    assert_eq!(results[2].0, "call_1_0");
    assert!(results[2].1.contains("no such file"), "{results:?}");
    let roles: Vec<String> = seen[2].messages().into_iter().map(|(role, _)| role).collect();
    assert_eq!(roles, ["system", "user", "assistant", "tool", "tool", "assistant", "tool"]);

    let fourth = events(&provider, request(&files, Vec::new())).await;
    assert!(matches!(fourth, Err(ProviderError::Failed(_))), "no rounds left: a 500");
}

#[tokio::test]
async fn queued_rounds_go_before_the_script_which_answers_after_them() {
    let fake = FakeOpenAi::start(|_| reply(&["scripted"], 1)).await;
    fake.queue(Round::text(&["queued"]));
    let provider = provider(&fake);
    let mut texts = Vec::new();
    for _ in 0..2 {
        let got = events(&provider, request(&[], Vec::new())).await.unwrap();
        texts.push(
            got.iter()
                .filter_map(|e| match e {
                    ReplyEvent::Delta(d) => Some(d.clone()),
                    _ => None,
                })
                .collect::<String>(),
        );
    }
    assert_eq!(texts, ["queued", "scripted"]);
    assert_eq!(fake.seen()[0].messages().len(), 1, "no files: no listing");
}
