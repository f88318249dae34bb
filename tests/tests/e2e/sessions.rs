//! Sessions: create, list across pages, get, delete with its turns.

use pantheon_tests::{Backend, expect_json, expect_problem, spawn_app};
use reqwest::Method;

on_both_databases!(
    sessions_are_created_listed_newest_first_across_pages_and_read,
    deleting_a_session_deletes_its_turns
);

async fn sessions_are_created_listed_newest_first_across_pages_and_read(backend: Backend) {
    let app = spawn_app(backend).await;
    let (_, token) = app.new_user();
    let (_, other) = app.new_user();
    app.create_session(&other).await;

    let mut created = Vec::new();
    for _ in 0..5 {
        created.push(app.create_session(&token).await["id"].as_str().unwrap().to_owned());
    }
    let newest_first: Vec<String> = created.iter().rev().cloned().collect();

    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut path = "/api/v1/sessions?limit=2".to_owned();
        if let Some(cursor) = &after {
            path.push_str(&format!("&after={cursor}"));
        }
        let page =
            expect_json(app.request(Method::GET, &path, &token).send().await.unwrap(), 200).await;
        pages += 1;
        let data = page["data"].as_array().unwrap();
        assert!(data.len() <= 2);
        seen.extend(data.iter().map(|s| s["id"].as_str().unwrap().to_owned()));
        if !page["has_more"].as_bool().unwrap() {
            assert!(page["next_cursor"].is_null());
            break;
        }
        after = Some(page["next_cursor"].as_str().unwrap().to_owned());
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, newest_first, "only the caller's sessions, newest first, each once");

    let one = expect_json(
        app.request(Method::GET, &format!("/api/v1/sessions/{}", created[0]), &token)
            .send()
            .await
            .unwrap(),
        200,
    )
    .await;
    assert_eq!(one["id"], created[0].as_str());
    assert_eq!(one["title"], "test");
    assert_eq!(one["turn_count"], 0);

    let bad_cursor =
        app.request(Method::GET, "/api/v1/sessions?after=bm9wZQ", &token).send().await.unwrap();
    expect_problem(bad_cursor, 400, "invalid_cursor").await;
    let bad_limit =
        app.request(Method::GET, "/api/v1/sessions?limit=101", &token).send().await.unwrap();
    expect_problem(bad_limit, 400, "invalid_query").await;
}

async fn deleting_a_session_deletes_its_turns(backend: Backend) {
    let app = spawn_app(backend).await;
    let (_, token) = app.new_user();
    let keep = app.create_session(&token).await["id"].as_str().unwrap().to_owned();
    let doomed = app.create_session(&token).await["id"].as_str().unwrap().to_owned();
    for session in [&keep, &doomed] {
        for _ in 0..2 {
            assert_eq!(app.submit_turn(&token, session, "hello").await.status(), 201);
        }
    }
    assert_eq!(app.count("turns").await, 4);

    let deleted = app
        .request(Method::DELETE, &format!("/api/v1/sessions/{doomed}"), &token)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 204);
    assert_eq!(
        app.count("turns").await,
        2,
        "the deleted session's turns are gone, the other's kept"
    );
    assert_eq!(app.count("sessions").await, 1);

    for path in [format!("/api/v1/sessions/{doomed}"), format!("/api/v1/sessions/{doomed}/turns")] {
        let gone = app.request(Method::GET, &path, &token).send().await.unwrap();
        expect_problem(gone, 404, "session_not_found").await;
    }
    let again = app
        .request(Method::DELETE, &format!("/api/v1/sessions/{doomed}"), &token)
        .send()
        .await
        .unwrap();
    expect_problem(again, 404, "session_not_found").await;
}
