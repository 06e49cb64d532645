//! The reference backend end to end: the real `linuxguard-backend` binary driven over real
//! TLS/mTLS by a ureq client (enrolment rules, mTLS endpoints, batches, faults, revocation).

use std::io::{Read, Write};
use std::time::Duration;

use serde_json::{Value, json};

use crate::common::{Backend, TempDir, start_backend, start_backend_in};

const TOKEN: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZ";
const W1: &str = "1111111111111111111111111111111111111111111111111111111111111111";
const W2: &str = "2222222222222222222222222222222222222222222222222222222222222222";
const UA: &str = "linuxguard-agent/0.1.0";

/// A node key and its CSR (PEM).
fn key_and_csr() -> (rcgen::KeyPair, String) {
    let key = rcgen::KeyPair::generate().expect("key");
    let csr = rcgen::CertificateParams::new(Vec::<String>::new())
        .expect("params")
        .serialize_request(&key)
        .expect("csr")
        .pem()
        .expect("pem");
    (key, csr)
}

fn enroll_body(tenant: Option<&str>, code: Option<&str>, workload: &str, csr: &str) -> String {
    json!({
        "tenantId": tenant,
        "enrollCode": code,
        "workloadId": workload,
        "nodeName": null,
        "podUid": null,
        "hostname": "test-host",
        "agentVersion": "0.1.0",
        "csr": csr,
    })
    .to_string()
}

/// Status, headers of interest and JSON body of a response.
struct Reply {
    status: u16,
    retry_after: Option<String>,
    body: Value,
}

fn send(
    client: &ureq::Agent,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Reply, ureq::Error> {
    let mut req = client.post(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let mut resp = req.send(body)?;
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let text = resp.body_mut().read_to_string()?;
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Ok(Reply {
        status,
        retry_after,
        body,
    })
}

fn enroll(b: &Backend, body: &str, workload: &str, bearer: Option<&str>) -> Reply {
    let auth = bearer.map(|k| format!("Bearer {k}"));
    let mut headers = vec![
        ("Content-Type", "application/json"),
        ("User-Agent", UA),
        ("Idempotency-Key", workload),
    ];
    if let Some(a) = auth.as_deref() {
        headers.push(("Authorization", a));
    }
    send(
        &b.client(None),
        &format!("{}/agent/enroll", b.url),
        &headers,
        body.as_bytes(),
    )
    .expect("enroll call")
}

/// The SPKI DER of the first certificate in a PEM chain, and its CN.
fn leaf_spki_and_cn(chain_pem: &str) -> (Vec<u8>, String) {
    let first = ureq::tls::parse_pem(chain_pem.as_bytes())
        .find_map(|i| match i {
            Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
            _ => None,
        })
        .expect("a certificate in the chain");
    let (_, x) = x509_parser::parse_x509_certificate(first.der()).expect("x509");
    let cn = x
        .subject()
        .iter_common_name()
        .next()
        .and_then(|c| c.as_str().ok())
        .expect("CN")
        .to_string();
    (x.public_key().raw.to_vec(), cn)
}

/// An enrolled identity: the chain and the key, ready for an mTLS client.
struct Identity {
    agent_id: String,
    chain: String,
    key: String,
}

fn enrolled(b: &Backend, token: &str, workload: &str) -> Identity {
    let (key, csr) = key_and_csr();
    let r = enroll(
        b,
        &enroll_body(Some("demo"), Some(token), workload, &csr),
        workload,
        None,
    );
    assert_eq!(r.status, 201, "{}", r.body);
    Identity {
        agent_id: r.body["agentId"].as_str().expect("agentId").to_string(),
        chain: r.body["certificateChain"]
            .as_str()
            .expect("chain")
            .to_string(),
        key: key.serialize_pem(),
    }
}

fn heartbeat(b: &Backend, id: Option<&Identity>) -> Reply {
    let client = b.client(id.map(|i| (i.chain.as_str(), i.key.as_str())));
    let body = json!({
        "agentId": id.map_or("none", |i| i.agent_id.as_str()),
        "workloadId": W1,
        "agentVersion": "0.1.0",
        "uptimeSeconds": 3,
        "stats": {"eventsObserved": 0, "eventsSent": 0,
                  "eventsDropped": {"kernel": 0, "queue": 0, "upload": 0}, "kubeletMisses": 0},
    });
    send(
        &client,
        &format!("{}/agent/heartbeat", b.url),
        &[("Content-Type", "application/json"), ("User-Agent", UA)],
        body.to_string().as_bytes(),
    )
    .expect("heartbeat call")
}

fn post_events(b: &Backend, id: &Identity, key: &str, body: &[u8]) -> Reply {
    send(
        &b.client(Some((&id.chain, &id.key))),
        &format!("{}/agent/events", b.url),
        &[
            ("Content-Type", "application/x-ndjson"),
            ("User-Agent", UA),
            ("Idempotency-Key", key),
        ],
        body,
    )
    .expect("events call")
}

#[test]
fn backend_enrol_replay_and_conflict() {
    let b = start_backend(&["--token", TOKEN]);
    let (key, csr) = key_and_csr();
    let body = enroll_body(Some("demo"), Some(TOKEN), W1, &csr);
    let first = enroll(&b, &body, W1, None);
    assert_eq!(first.status, 201, "{}", first.body);
    let agent_id = first.body["agentId"].as_str().expect("agentId").to_string();
    let chain = first.body["certificateChain"].as_str().expect("chain");
    let (spki, cn) = leaf_spki_and_cn(chain);
    assert_eq!(
        spki,
        rcgen::PublicKeyData::subject_public_key_info(&key),
        "the leaf carries our public key"
    );
    assert_eq!(cn, agent_id);
    assert_eq!(
        chain.matches("BEGIN CERTIFICATE").count(),
        2,
        "leaf then CA"
    );
    assert_eq!(first.body["caBundle"].as_str(), Some(b.ca_pem().as_str()));
    assert_eq!(first.body["heartbeatIntervalSeconds"], 30);

    // Same token, same workload, same CSR: the same identity and certificate.
    let replay = enroll(&b, &body, W1, None);
    assert_eq!(replay.status, 200, "{}", replay.body);
    assert_eq!(replay.body["agentId"], first.body["agentId"]);
    assert_eq!(
        replay.body["certificateChain"],
        first.body["certificateChain"]
    );
    // Same workload with a new key (dashed, lower-case token): same id, a new certificate.
    let (key2, csr2) = key_and_csr();
    let dashed = "abcde-fghij-klmno-pqrst-uvwxyz";
    let again = enroll(
        &b,
        &enroll_body(Some("demo"), Some(dashed), W1, &csr2),
        W1,
        None,
    );
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(again.body["agentId"], first.body["agentId"]);
    let (spki2, _) = leaf_spki_and_cn(again.body["certificateChain"].as_str().expect("chain"));
    assert_eq!(spki2, rcgen::PublicKeyData::subject_public_key_info(&key2));

    // Another workload: conflict.
    let other = enroll(
        &b,
        &enroll_body(Some("demo"), Some(TOKEN), W2, &csr),
        W2,
        None,
    );
    assert_eq!(other.status, 409);
    assert_eq!(
        other.body["error"],
        "token already consumed by another workload"
    );

    let stats = b.admin_get("/admin/stats");
    assert_eq!(stats["enrollCalls"], 4);
    assert_eq!(stats["enrolled"], 1);
    // Nothing secret in the backend's log.
    let log = b.log_text();
    assert!(log.contains("POST /agent/enroll -> 201"), "{log}");
    assert!(
        !log.contains(TOKEN) && !log.contains("CERTIFICATE REQUEST"),
        "{log}"
    );
}

#[test]
fn backend_enrol_rejections() {
    let b = start_backend(&[
        "--token",
        TOKEN,
        "--expired-token",
        "EXPIREDEXPIREDEXPIREDEXPI",
        "--api-key",
        "k-123",
    ]);
    let (_, csr) = key_and_csr();
    let r = enroll(
        &b,
        &enroll_body(Some("demo"), Some("EXPIREDEXPIREDEXPIREDEXPI"), W1, &csr),
        W1,
        None,
    );
    assert_eq!(
        (r.status, r.body["error"].as_str()),
        (400, Some("enrollment token expired"))
    );
    let r = enroll(&b, &enroll_body(None, Some(TOKEN), W1, &csr), W1, None);
    assert_eq!(
        (r.status, r.body["error"].as_str()),
        (400, Some("tenantId required for TOTP enrollment"))
    );
    let r = enroll(&b, &enroll_body(Some(""), Some(TOKEN), W1, &csr), W1, None);
    assert_eq!(r.status, 400);
    let r = enroll(
        &b,
        &enroll_body(Some("demo"), Some("ZZZZZZZZZZZZZZZZZZZZZZZZ"), W1, &csr),
        W1,
        None,
    );
    assert_eq!(r.status, 401, "{}", r.body);
    let r = enroll(
        &b,
        &enroll_body(Some("acme"), Some(TOKEN), W1, &csr),
        W1,
        None,
    );
    assert_eq!(r.status, 401, "wrong tenant: {}", r.body);
    // Contract violations are 400 with a message.
    let r = enroll(
        &b,
        &enroll_body(Some("demo"), Some(TOKEN), W1, &csr),
        W2,
        None,
    );
    assert_eq!(r.status, 400);
    assert!(
        r.body["error"]
            .as_str()
            .expect("error")
            .contains("Idempotency-Key")
    );
    let r = enroll(
        &b,
        &enroll_body(Some("demo"), Some(TOKEN), W1, "not a csr"),
        W1,
        None,
    );
    assert_eq!(r.status, 400);
    assert!(r.body["error"].as_str().expect("error").contains("csr"));
    let r = enroll(&b, "{not json", W1, None);
    assert_eq!(r.status, 400);
    let r = send(
        &b.client(None),
        &format!("{}/agent/enroll", b.url),
        &[
            ("Content-Type", "application/json"),
            ("Idempotency-Key", W1),
        ],
        enroll_body(Some("demo"), Some(TOKEN), W1, &csr).as_bytes(),
    )
    .expect("call");
    assert_eq!(r.status, 400, "missing User-Agent");

    // API-key path: no tenant needed, not single-use, replay is 200.
    let body = enroll_body(None, None, W1, &csr);
    assert_eq!(enroll(&b, &body, W1, Some("wrong")).status, 401);
    let first = enroll(&b, &body, W1, Some("k-123"));
    assert_eq!(first.status, 201, "{}", first.body);
    let replay = enroll(&b, &body, W1, Some("k-123"));
    assert_eq!(replay.status, 200);
    assert_eq!(replay.body["agentId"], first.body["agentId"]);
    let other = enroll(&b, &enroll_body(None, None, W2, &csr), W2, Some("k-123"));
    assert_eq!(other.status, 201);
    assert_ne!(other.body["agentId"], first.body["agentId"]);
    // The token was never consumed by the rejected attempts.
    let r = enroll(
        &b,
        &enroll_body(Some("demo"), Some(TOKEN), W2, &csr),
        W2,
        None,
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let log = b.log_text();
    assert!(!log.contains("k-123") && !log.contains(TOKEN), "{log}");
}

#[test]
fn backend_mtls_heartbeat_events_renew_revoke() {
    let b = start_backend(&[
        "--token",
        TOKEN,
        "--max-batch-bytes",
        "1000",
        "--heartbeat-interval-secs",
        "7",
    ]);
    let id = enrolled(&b, TOKEN, W1);

    let r = heartbeat(&b, Some(&id));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["heartbeatIntervalSeconds"], 7);
    let r = heartbeat(&b, None);
    assert_eq!(r.status, 401, "no client cert: {}", r.body);

    // Events: one key counted once; oversized → 413; not-JSON line → 400.
    let batch = b"{\"type\":\"exec\"}\n{\"type\":\"exit\"}\n";
    assert_eq!(post_events(&b, &id, "batch-1", batch).status, 202);
    assert_eq!(post_events(&b, &id, "batch-1", batch).status, 200);
    let big = "{\"x\":1}\n".repeat(200);
    assert_eq!(post_events(&b, &id, "batch-2", big.as_bytes()).status, 413);
    assert_eq!(post_events(&b, &id, "batch-3", b"{}\nnope\n").status, 400);
    let stats = b.admin_get("/admin/stats");
    assert_eq!(stats["heartbeats"], 1);
    assert_eq!(stats["lastHeartbeat"]["agentId"], id.agent_id.as_str());
    assert_eq!(stats["batches"], 1);
    assert_eq!(stats["duplicateBatches"], 1);
    assert_eq!(stats["eventsReceived"], 2);
    assert_eq!(
        b.admin_get("/admin/events").as_array().map(Vec::len),
        Some(2)
    );
    let hb = b.requests_to("/agent/heartbeat");
    assert_eq!(hb[0]["agentId"], id.agent_id.as_str());
    assert_eq!(hb[1]["agentId"], Value::Null);

    // Renew with a fresh key: same agent id, new public key.
    let (key2, csr2) = key_and_csr();
    let r = send(
        &b.client(Some((&id.chain, &id.key))),
        &format!("{}/agent/renew", b.url),
        &[("Content-Type", "application/json"), ("User-Agent", UA)],
        json!({ "csr": csr2 }).to_string().as_bytes(),
    )
    .expect("renew");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["agentId"], id.agent_id.as_str());
    let (spki, _) = leaf_spki_and_cn(r.body["certificateChain"].as_str().expect("chain"));
    assert_eq!(spki, rcgen::PublicKeyData::subject_public_key_info(&key2));
    let renewed = Identity {
        agent_id: id.agent_id.clone(),
        chain: r.body["certificateChain"]
            .as_str()
            .expect("chain")
            .to_string(),
        key: key2.serialize_pem(),
    };
    assert_eq!(heartbeat(&b, Some(&renewed)).status, 200);
    assert_eq!(b.admin_get("/admin/stats")["renewals"], 1);

    // Revoke: every later mTLS call is 401.
    b.admin_post("/admin/revoke", json!({ "agentId": id.agent_id }));
    assert_eq!(heartbeat(&b, Some(&id)).status, 401);
    assert_eq!(heartbeat(&b, Some(&renewed)).status, 401);
    assert_eq!(post_events(&b, &id, "batch-9", batch).status, 401);
}

#[test]
fn backend_revoke_all_and_tokens_added_at_run_time() {
    let b = start_backend(&["--token", TOKEN]);
    b.admin_post(
        "/admin/tokens",
        json!({ "token": "QQQQQQQQQQQQQQQQQQQQQQQQ" }),
    );
    b.admin_post(
        "/admin/tokens",
        json!({ "token": "RRRRRRRRRRRRRRRRRRRRRRRR", "expired": true }),
    );
    let a = enrolled(&b, TOKEN, W1);
    let c = enrolled(&b, "QQQQQQQQQQQQQQQQQQQQQQQQ", W2);
    let (_, csr) = key_and_csr();
    let r = enroll(
        &b,
        &enroll_body(Some("demo"), Some("RRRRRRRRRRRRRRRRRRRRRRRR"), W1, &csr),
        W1,
        None,
    );
    assert_eq!(r.status, 400);
    b.admin_post("/admin/revoke", json!({}));
    assert_eq!(heartbeat(&b, Some(&a)).status, 401);
    assert_eq!(heartbeat(&b, Some(&c)).status, 401);
    // Replaying the consumed token does not revive a revoked identity.
    let r = enroll(
        &b,
        &enroll_body(Some("demo"), Some(TOKEN), W1, &csr),
        W1,
        None,
    );
    assert_eq!(r.status, 403, "{}", r.body);
}

#[test]
fn backend_api_key_gets_a_new_identity_after_revocation() {
    let b = start_backend(&["--api-key", "key-1"]);
    let (_, csr) = key_and_csr();
    let body = enroll_body(None, None, W1, &csr);
    let first = enroll(&b, &body, W1, Some("key-1"));
    assert_eq!(first.status, 201);
    b.admin_post("/admin/revoke", json!({ "agentId": first.body["agentId"] }));
    let again = enroll(&b, &body, W1, Some("key-1"));
    assert_eq!(again.status, 201, "{}", again.body);
    assert_ne!(again.body["agentId"], first.body["agentId"]);
}

#[test]
fn backend_fault_injection_503_then_success_with_identical_requests() {
    let b = start_backend(&["--token", TOKEN]);
    b.admin_post(
        "/admin/faults",
        json!({"path": "/agent/enroll", "status": 503, "count": 3, "retryAfter": 1}),
    );
    let (_, csr) = key_and_csr();
    let body = enroll_body(Some("demo"), Some(TOKEN), W1, &csr);
    for _ in 0..3 {
        let r = enroll(&b, &body, W1, None);
        assert_eq!(r.status, 503);
        assert_eq!(r.retry_after.as_deref(), Some("1"));
        assert_eq!(r.body["error"], "injected");
    }
    assert_eq!(enroll(&b, &body, W1, None).status, 201);
    let reqs = b.requests_to("/agent/enroll");
    assert_eq!(reqs.len(), 4);
    let statuses: Vec<_> = reqs.iter().map(|r| r["status"].as_u64()).collect();
    assert_eq!(statuses, [Some(503), Some(503), Some(503), Some(201)]);
    assert!(reqs.iter().all(|r| r["body"] == reqs[0]["body"]));
    assert_eq!(reqs[0]["headers"]["idempotency-key"], W1);

    // Time-based fault, then cleared.
    b.admin_post(
        "/admin/faults",
        json!({"path": "/agent/enroll", "status": 429, "seconds": 30}),
    );
    assert_eq!(enroll(&b, &body, W1, None).status, 429);
    assert_eq!(enroll(&b, &body, W1, None).status, 429);
    b.admin_delete("/admin/faults");
    assert_eq!(enroll(&b, &body, W1, None).status, 200);
}

#[test]
fn backend_dropped_response_consumes_the_token_and_stall_holds_the_connection() {
    let b = start_backend(&["--token", TOKEN]);
    b.admin_post(
        "/admin/faults",
        json!({"path": "/agent/enroll", "dropResponse": true}),
    );
    let (_, csr) = key_and_csr();
    let body = enroll_body(Some("demo"), Some(TOKEN), W1, &csr);
    let lost = send(
        &b.client(None),
        &format!("{}/agent/enroll", b.url),
        &[
            ("Content-Type", "application/json"),
            ("User-Agent", UA),
            ("Idempotency-Key", W1),
        ],
        body.as_bytes(),
    );
    assert!(lost.is_err(), "the response must be lost");
    let reqs = b.requests_to("/agent/enroll");
    assert_eq!(reqs[0]["status"], 201);
    assert_eq!(reqs[0]["fault"], "dropResponse");
    // The retry is an idempotent replay.
    let r = enroll(&b, &body, W1, None);
    assert_eq!(r.status, 200);
    assert_eq!(b.admin_get("/admin/stats")["enrolled"], 1);

    b.admin_post(
        "/admin/faults",
        json!({"path": "/agent/enroll", "stallSeconds": 30}),
    );
    let client: ureq::Agent = ureq::Agent::config_builder()
        .tls_config(
            ureq::tls::TlsConfig::builder()
                .root_certs(ureq::tls::RootCerts::new_with_certs(&[
                    ureq::tls::Certificate::from_pem(b.ca_pem().as_bytes()).expect("ca"),
                ]))
                .build(),
        )
        .timeout_global(Some(Duration::from_secs(2)))
        .build()
        .into();
    let started = std::time::Instant::now();
    let stalled = send(
        &client,
        &format!("{}/agent/enroll", b.url),
        &[
            ("Content-Type", "application/json"),
            ("User-Agent", UA),
            ("Idempotency-Key", W1),
        ],
        body.as_bytes(),
    );
    assert!(stalled.is_err(), "stalled request must time out");
    assert!(started.elapsed() >= Duration::from_secs(2));
    // Other paths and connections are still served.
    assert_eq!(b.admin_get("/admin/stats")["enrollCalls"], 3);
}

/// Raw TLS connection to the backend (no HTTP library): for malformed requests.
fn raw_tls(b: &Backend, bytes: &[u8]) -> String {
    use std::sync::Arc;
    let mut roots = rustls::RootCertStore::empty();
    let ca = ureq::tls::Certificate::from_pem(b.ca_pem().as_bytes()).expect("ca");
    roots
        .add(rustls_pki_types::CertificateDer::from(ca.der().to_vec()))
        .expect("root");
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
    let conn = rustls::ClientConnection::new(Arc::new(config), name).expect("conn");
    let addr = b.url.trim_start_matches("https://");
    let sock = std::net::TcpStream::connect(addr).expect("connect");
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut tls = rustls::StreamOwned::new(conn, sock);
    tls.write_all(bytes).expect("write");
    let mut out = Vec::new();
    let _ = tls.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn backend_malformed_requests_get_400_and_the_server_survives() {
    let b = start_backend(&["--token", TOKEN]);
    let r = raw_tls(&b, b"GARBAGE\x01 / HTTP/1.1\r\n\r\n");
    assert!(r.starts_with("HTTP/1.1 400 "), "{r}");
    assert!(r.contains("\"error\""), "{r}");
    let mut huge = b"GET /admin/stats HTTP/1.1\r\nX: ".to_vec();
    huge.extend(std::iter::repeat_n(b'a', 64 * 1024));
    let r = raw_tls(&b, &huge);
    assert!(r.starts_with("HTTP/1.1 431 "), "{r}");
    let r = raw_tls(
        &b,
        b"POST /agent/enroll HTTP/1.1\r\nContent-Length: 99999999999\r\n\r\n",
    );
    assert!(r.starts_with("HTTP/1.1 413 "), "{r}");
    // Chunked bodies are accepted; keep-alive serves two requests on one connection.
    let r = raw_tls(
        &b,
        b"POST /admin/tokens HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n7\r\n{\"token\r\n10\r\n\": \"SSSSSSSSSS\"}\r\n0\r\n\r\nGET /admin/stats HTTP/1.1\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.matches("HTTP/1.1 200 OK").count(), 2, "{r}");
    assert_eq!(b.admin_get("/admin/stats")["enrollCalls"], 0);
}

#[test]
fn backend_generates_a_token_and_keeps_its_ca_across_restarts() {
    let state = TempDir::new("backend-restart");
    let path = state.path().to_path_buf();
    let b = start_backend_in(state, &[]);
    let token = b.printed_token().expect("printed token");
    assert_eq!(token.len(), 26);
    assert!(b.stdout_text().contains(&format!("listening on {}", b.url)));
    let ca = b.ca_pem();
    let id = enrolled(&b, &token, W1);
    assert!(!b.log_text().contains(&token), "token logged");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(path.join("ca-key.pem"))
            .expect("key")
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    // Restart on the same state dir: same CA, and the old identity still passes mTLS.
    let state = b.stop();
    let b2 = start_backend_in(state, &["--token", TOKEN]);
    assert_eq!(b2.ca_pem(), ca);
    assert_eq!(heartbeat(&b2, Some(&id)).status, 200);
}

#[test]
fn backend_short_lived_certificates_expire() {
    let b = start_backend(&["--token", TOKEN, "--cert-lifetime-secs", "2"]);
    let id = enrolled(&b, TOKEN, W1);
    let first = ureq::tls::parse_pem(id.chain.as_bytes())
        .find_map(|i| match i {
            Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
            _ => None,
        })
        .expect("leaf");
    let (_, x) = x509_parser::parse_x509_certificate(first.der()).expect("x509");
    let v = x.validity();
    assert_eq!(v.not_after.timestamp() - v.not_before.timestamp(), 2);
    assert_eq!(heartbeat(&b, Some(&id)).status, 200);
    std::thread::sleep(Duration::from_millis(3100));
    // An expired client certificate gets 401 with the reason (the agent then drops its
    // identity) rather than a bare TLS alert it would retry forever.
    let r = heartbeat(&b, Some(&id));
    assert_eq!(r.status, 401, "{}", r.body);
    let why = r.body["error"].as_str().expect("error");
    assert!(why.starts_with("client certificate rejected"), "{why}");
    assert!(why.to_lowercase().contains("expired"), "{why}");
}

#[test]
fn backend_rejects_a_certificate_from_another_ca_with_401() {
    let other = start_backend(&["--token", TOKEN]);
    let foreign = enrolled(&other, TOKEN, W1);
    let b = start_backend(&["--token", TOKEN]);
    let r = heartbeat(&b, Some(&foreign));
    assert_eq!(r.status, 401, "{}", r.body);
    assert!(
        r.body["error"]
            .as_str()
            .expect("error")
            .starts_with("client certificate rejected"),
        "{}",
        r.body
    );
    assert_eq!(b.requests_to("/agent/heartbeat")[0]["agentId"], Value::Null);
}

/// A `k8s_psat` enrolment body (contract v1.1) for `node`/`pod` with `token`.
fn psat_body(
    tenant: Option<&str>,
    node: &str,
    pod: &str,
    workload: &str,
    csr: &str,
    token: &str,
) -> String {
    json!({
        "tenantId": tenant,
        "enrollCode": null,
        "workloadId": workload,
        "nodeName": node,
        "podUid": pod,
        "hostname": node,
        "agentVersion": "0.1.0",
        "csr": csr,
        "attestation": {"type": "k8s_psat", "token": token},
    })
    .to_string()
}

/// The reference backend verifies service-account tokens for real: RS256 and ES256 against the
/// tenant's JWKS (kid chosen), audience, expiry, the pod and node claims; a second enrolment of
/// the same workload is 201 with a certificate for its new CSR, never 409.
#[test]
fn backend_k8s_psat_verifies_tokens_and_never_conflicts() {
    use crate::sa_issuer::{self, Claims, IssuerKey};
    let dir = sa_issuer::dir();
    let es = IssuerKey::es256("es-key");
    let rs = IssuerKey::rs256("rs-key", dir.path());
    let jwks = sa_issuer::write_jwks(dir.path(), &[&es, &rs]);
    let b = start_backend(&["--psat-jwks", jwks.to_str().expect("utf-8 path")]);
    let (node, pod) = ("worker-1", "7b8f9c1d-0000-4000-8000-000000000001");
    let w = sa_issuer::workload_id(node, pod);
    let ok = Claims::pod(node, pod);

    for key in [&es, &rs] {
        let (k1, csr1) = key_and_csr();
        let r = enroll(
            &b,
            &psat_body(Some("demo"), node, pod, &w, &csr1, &key.mint(&ok)),
            &w,
            None,
        );
        assert!(r.status == 201, "{} {}", r.status, r.body);
        let (spki, _) = leaf_spki_and_cn(r.body["certificateChain"].as_str().expect("chain"));
        assert_eq!(
            spki,
            rcgen::PublicKeyData::subject_public_key_info(&k1),
            "the certificate is for this CSR's key"
        );
    }
    // Same workload, new CSR: 201 with a new certificate, same agent id; the same request
    // again (a lost response): 200 with the same certificate.
    let (_, csr) = key_and_csr();
    let body = psat_body(Some("demo"), node, pod, &w, &csr, &es.mint(&ok));
    let a = enroll(&b, &body, &w, None);
    assert_eq!(a.status, 201, "{}", a.body);
    let again = enroll(&b, &body, &w, None);
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(again.body["certificateChain"], a.body["certificateChain"]);
    assert_eq!(
        b.admin_get("/admin/stats")["enrolled"],
        1,
        "one agent id per workload"
    );

    let refused = |token: String, want: &str| {
        let (_, csr) = key_and_csr();
        let r = enroll(
            &b,
            &psat_body(Some("demo"), node, pod, &w, &csr, &token),
            &w,
            None,
        );
        assert_eq!(r.status, 401, "{want}: {}", r.body);
        let e = r.body["error"].as_str().expect("error").to_string();
        assert!(e.starts_with("service account token rejected: "), "{e}");
        assert!(e.contains(want), "{want:?} not in {e:?}");
    };
    let mut c = ok.clone();
    c.audience = vec!["https://kubernetes.default.svc".into()];
    refused(rs.mint(&c), "audience");
    let mut c = ok.clone();
    c.exp_in = -120;
    refused(es.mint(&c), "expired");
    let mut c = ok.clone();
    c.nbf_in = 300;
    refused(es.mint(&c), "nbf");
    // Another pod's token with this pod's UID in the body.
    refused(
        es.mint(&Claims::pod(node, "7b8f9c1d-0000-4000-8000-000000000002")),
        "issued to pod",
    );
    let mut c = ok.clone();
    c.node_name = Some("worker-2".into());
    refused(rs.mint(&c), "issued on node");
    // A token signed by a key the tenant does not trust, under a trusted kid: bad signature.
    let rogue = IssuerKey::es256("es-key");
    refused(rogue.mint(&ok), "signature");
    refused(IssuerKey::es256("other-kid").mint(&ok), "kid \"other-kid\"");
    let t = es.mint(&ok);
    let (head, sig) = t.rsplit_once('.').expect("jwt");
    let flipped = if sig.starts_with('A') { "B" } else { "A" };
    refused(format!("{head}.{flipped}{}", &sig[1..]), "signature");
    // No node claim (an older apiserver) is fine when the pod matches.
    let mut c = ok.clone();
    c.node_name = None;
    let (_, csr) = key_and_csr();
    let r = enroll(
        &b,
        &psat_body(Some("demo"), node, pod, &w, &csr, &es.mint(&c)),
        &w,
        None,
    );
    assert_eq!(r.status, 201, "{}", r.body);

    // Malformed requests are 400: no tenant, a workload id that is not sha256(node:pod), a
    // token with an Authorization header, an unknown attestation type.
    let (_, csr) = key_and_csr();
    let tok = es.mint(&ok);
    let r = enroll(&b, &psat_body(None, node, pod, &w, &csr, &tok), &w, None);
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        r.body["error"]
            .as_str()
            .unwrap_or("")
            .contains("tenantId required")
    );
    let r = enroll(
        &b,
        &psat_body(Some("demo"), node, pod, W1, &csr, &tok),
        W1,
        None,
    );
    assert_eq!(r.status, 400, "{}", r.body);
    let r = enroll(
        &b,
        &psat_body(Some("demo"), node, pod, &w, &csr, &tok),
        &w,
        Some("key"),
    );
    assert_eq!(r.status, 400, "{}", r.body);
    let mut v: Value =
        serde_json::from_str(&psat_body(Some("demo"), node, pod, &w, &csr, &tok)).expect("json");
    v["attestation"]["type"] = json!("aws_iid");
    assert_eq!(enroll(&b, &v.to_string(), &w, None).status, 400);
    // A tenant with no trusted issuer: 401.
    let r = enroll(
        &b,
        &psat_body(Some("other"), node, pod, &w, &csr, &tok),
        &w,
        None,
    );
    assert_eq!(r.status, 401, "{}", r.body);
    assert!(
        r.body["error"]
            .as_str()
            .unwrap_or("")
            .contains("trusts no service-account issuer")
    );
}
