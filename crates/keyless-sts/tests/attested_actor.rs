//! Attested actors (`actor.rs`): an actor attester (the gateway behind the
//! mTLS listener) passes on the X509-SVID an agent authenticated with, and
//! the OBO token says who vouched for it. Nobody else can use that actor
//! token type: not an ordinary registered client, not a hand-built client
//! claiming the attester's id, not a caller without client authentication,
//! not over HTTP; and the certificate itself must be a current SVID of ours.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use common::*;
use http_body_util::BodyExt;
use keyless_identity::NewEntry;
use keyless_sts::{
    AuthenticatedClient, CLIENT_ASSERTION_TYPE_JWT_SPIFFE, ClientRegistration, ExchangeContext,
    StsConfig, TOKEN_TYPE_ATTESTED_X509_SVID, TokenExchangeRequest,
};
use serde_json::{Value, json};
use tower::ServiceExt;

const GATEWAY: &str = "spiffe://example.org/keyless/gateway";
const GATEWAY_URI: &str = "http://127.0.0.1:8180/mcp";
const ORDINARY: &str = "spiffe://example.org/ordinary";

fn read_users() -> Value {
    json!([{"type": "directory_read", "actions": ["read"], "datatypes": ["users"]}])
}

/// An STS where `keyless-gateway` may attest actors and `ordinary` is a
/// registered client that may not.
async fn open_attesting() -> Fixture {
    let mut config = StsConfig::new(ISSUER);
    config.clients.push(ClientRegistration {
        client_id: "keyless-gateway".into(),
        spiffe_id: GATEWAY.into(),
        uri: GATEWAY_URI.into(),
    });
    config.clients.push(ClientRegistration {
        client_id: "ordinary".into(),
        spiffe_id: ORDINARY.into(),
        uri: "http://127.0.0.1:9999/app".into(),
    });
    config.actor_attesters.push("keyless-gateway".into());
    let tmp = tempfile::tempdir().unwrap();
    let store = keyless_store::Store::open_sqlite(&tmp.path().join("k.db"))
        .await
        .unwrap();
    let mut f = open_with(store, &tmp.path().join("keys"), config).await;
    f._tmp = Some(tmp);
    f
}

/// AGENT's X509-SVID leaf, base64url DER (what the gateway sends).
async fn agent_leaf(f: &Fixture) -> String {
    let entry = f
        .identity
        .create_entry(NewEntry::new(
            AGENT.parse().unwrap(),
            vec!["unix:uid:4242".parse().unwrap()],
        ))
        .await
        .unwrap();
    let svid = f.identity.mint_x509_svid(&entry).unwrap();
    b64(&svid.cert_chain[0])
}

async fn client(f: &Fixture, spiffe_id: &str) -> AuthenticatedClient {
    let assertion = f.svid(spiffe_id, ISSUER).await;
    f.sts
        .authenticate_client(CLIENT_ASSERTION_TYPE_JWT_SPIFFE, &assertion)
        .unwrap()
}

fn attested_request(user: &str, leaf: &str) -> TokenExchangeRequest {
    let mut req = exchange_request(user, leaf, "directory", &read_users());
    req.actor_token_type = Some(TOKEN_TYPE_ATTESTED_X509_SVID.into());
    req
}

fn successes(f: &Fixture) -> usize {
    f.event_kinds()
        .iter()
        .filter(|k| *k == "token_exchange.success")
        .count()
}

/// `req` from `client` is refused with `invalid_request` mentioning
/// `contains`; nothing is issued and the denial is on record.
async fn check_refused(
    f: &Fixture,
    req: &TokenExchangeRequest,
    client: Option<&AuthenticatedClient>,
    contains: &str,
) {
    let before = successes(f);
    match f
        .sts
        .exchange(req, client, &ExchangeContext::default())
        .await
    {
        Ok(r) => panic!(
            "expected a refusal, got a token acting as {:?}",
            r.claims.act
        ),
        Err(e) => {
            assert_eq!(e.oauth_code(), "invalid_request", "{e}");
            assert!(e.to_string().contains(contains), "`{e}` lacks `{contains}`");
        }
    }
    assert_eq!(successes(f), before, "nothing may be issued");
    let last = f.events.events().pop().unwrap();
    assert_eq!(last.kind, "token_exchange.denied");
}

#[tokio::test]
async fn an_attester_vouches_for_an_mtls_agent_and_the_token_and_event_say_so() {
    let f = open_attesting().await;
    f.consent(AGENT, &["directory_read"]).await;
    let user = f.user_token(&[AGENT]).await;
    let leaf = agent_leaf(&f).await;
    let gateway = client(&f, GATEWAY).await;
    let resp = f
        .sts
        .exchange(
            &attested_request(&user, &leaf),
            Some(&gateway),
            &ExchangeContext::default(),
        )
        .await
        .unwrap();
    let claims = jws_part(&resp.access_token, 1);
    let thumbprint = {
        let der = base64::Engine::decode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            leaf.as_bytes(),
        )
        .unwrap();
        keyless_identity::PeerSvid {
            spiffe_id: AGENT.parse().unwrap(),
            leaf_der: der,
        }
        .x5t_s256()
    };
    assert_eq!(
        claims["act"],
        json!({"sub": AGENT, "attested_by": GATEWAY, "x5t#S256": thumbprint})
    );
    assert_eq!(claims["client_id"], "keyless-gateway");
    let event = f.events.events().pop().unwrap();
    assert_eq!(event.kind, "token_exchange.success");
    assert_eq!(event.agent.as_deref(), Some(AGENT));
    assert_eq!(event.detail["actor_attested_by"], GATEWAY);
    assert_eq!(event.detail["actor_x5t#S256"], thumbprint);

    // may_act still binds: an attested agent the user did not allow.
    let other = f.user_token(&[OTHER_AGENT]).await;
    check_refused(
        &f,
        &attested_request(&other, &leaf),
        Some(&gateway),
        "not in may_act",
    )
    .await;
}

#[tokio::test]
async fn no_one_but_a_registered_attester_can_use_an_attested_actor_token() {
    let f = open_attesting().await;
    f.consent(AGENT, &["directory_read"]).await;
    let user = f.user_token(&[AGENT]).await;
    let leaf = agent_leaf(&f).await;
    let req = attested_request(&user, &leaf);

    // No client authentication (the agent, or anyone holding its cert).
    check_refused(&f, &req, None, "actor attester").await;
    // An ordinary registered client.
    let ordinary = client(&f, ORDINARY).await;
    check_refused(&f, &req, Some(&ordinary), "actor attester").await;
    // A client struct claiming the attester's id without its SVID (as a
    // `private_key_jwt` client would come out), or with another SVID.
    for forged in [
        AuthenticatedClient {
            client_id: "keyless-gateway".into(),
            spiffe_id: None,
            uri: GATEWAY_URI.into(),
        },
        AuthenticatedClient {
            client_id: "keyless-gateway".into(),
            spiffe_id: Some(ORDINARY.into()),
            uri: GATEWAY_URI.into(),
        },
    ] {
        check_refused(&f, &req, Some(&forged), "actor attester").await;
    }
}

#[tokio::test]
async fn the_attester_cannot_vouch_for_a_certificate_that_is_not_a_current_svid_of_ours() {
    let f = open_attesting().await;
    f.consent(AGENT, &["directory_read"]).await;
    let user = f.user_token(&[AGENT]).await;
    let gateway = client(&f, GATEWAY).await;

    // Self-signed, naming our agent.
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = vec![rcgen::SanType::URI(AGENT.try_into().unwrap())];
    let forged = params.self_signed(&key).unwrap();
    check_refused(
        &f,
        &attested_request(&user, &b64(forged.der())),
        Some(&gateway),
        "actor_token is not valid",
    )
    .await;
    // Not base64url.
    check_refused(
        &f,
        &attested_request(&user, "not a certificate!"),
        Some(&gateway),
        "base64url",
    )
    .await;
    // A JWT-SVID sent under the certificate type.
    let jwt = f.svid(AGENT, ISSUER).await;
    check_refused(
        &f,
        &attested_request(&user, &jwt),
        Some(&gateway),
        "actor_token",
    )
    .await;
}

#[tokio::test]
async fn over_http_an_ordinary_client_is_refused_and_the_attester_is_served() {
    let f = open_attesting().await;
    f.consent(AGENT, &["directory_read"]).await;
    let user = f.user_token(&[AGENT]).await;
    let leaf = agent_leaf(&f).await;
    let post = |assertion: String| {
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs([
                ("grant_type", keyless_sts::GRANT_TYPE_TOKEN_EXCHANGE),
                ("subject_token", user.as_str()),
                ("subject_token_type", keyless_sts::TOKEN_TYPE_ACCESS_TOKEN),
                ("actor_token", leaf.as_str()),
                ("actor_token_type", TOKEN_TYPE_ATTESTED_X509_SVID),
                ("audience", "directory"),
                ("authorization_details", &read_users().to_string()),
                ("client_assertion_type", CLIENT_ASSERTION_TYPE_JWT_SPIFFE),
                ("client_assertion", &assertion),
            ])
            .finish();
        Request::post("/oauth2/token")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(body))
            .unwrap()
    };
    let send = |req: Request<Body>| async {
        let resp = keyless_sts::http::router(f.sts.clone())
            .oneshot(req)
            .await
            .unwrap();
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice::<Value>(&body).unwrap())
    };
    let (status, body) = send(post(f.svid(ORDINARY, ISSUER).await)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"], "invalid_request");
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("actor attester"),
        "{body}"
    );
    let (status, body) = send(post(f.svid(GATEWAY, ISSUER).await)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let claims = jws_part(body["access_token"].as_str().unwrap(), 1);
    assert_eq!(claims["act"]["attested_by"], GATEWAY);
}

#[tokio::test]
async fn an_attester_must_be_a_registered_jwt_svid_client() {
    let mut config = StsConfig::new(ISSUER);
    config.actor_attesters.push("nobody".into());
    let tmp = tempfile::tempdir().unwrap();
    let store = keyless_store::Store::open_sqlite(&tmp.path().join("k.db"))
        .await
        .unwrap();
    let keys =
        std::sync::Arc::new(keyless_store::FileKeyManager::open(&tmp.path().join("keys")).unwrap());
    let events = std::sync::Arc::new(keyless_audit::MemorySink::default());
    let identity = keyless_identity::Identity::open(
        store.clone(),
        keys.clone(),
        events.clone(),
        keyless_identity::IdentityConfig::new(
            keyless_identity::TrustDomain::new(TD).unwrap(),
            ISSUER.to_owned(),
        ),
    )
    .await
    .unwrap();
    let e = keyless_sts::Sts::open(
        store,
        keys as std::sync::Arc<dyn keyless_store::KeyManager>,
        identity,
        events,
        config,
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("actor attester `nobody`"), "{e}");
}
