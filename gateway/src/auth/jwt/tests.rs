use super::*;
use crate::config::JwtKeyConfig;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{encode, get_current_timestamp, EncodingKey, Header};
use serde_json::{json, Value};

const RSA_PRIVATE: &str = include_str!("../../../testdata/jwt/rsa-private.pem");
const RSA_PUBLIC: &str = include_str!("../../../testdata/jwt/rsa-public.pem");
const ES256_PRIVATE: &str = include_str!("../../../testdata/jwt/es256-private.pem");
const ES256_PUBLIC: &str = include_str!("../../../testdata/jwt/es256-public.pem");
const ES384_PRIVATE: &str = include_str!("../../../testdata/jwt/es384-private.pem");
const ES384_PUBLIC: &str = include_str!("../../../testdata/jwt/es384-public.pem");
const ED_PRIVATE: &str = include_str!("../../../testdata/jwt/ed25519-private.pem");
const ED_PUBLIC: &str = include_str!("../../../testdata/jwt/ed25519-public.pem");
const SECRET: &str = "hs256-test-secret-0123456789abcdef";
const TTL: Duration = Duration::from_secs(5);

fn key(alg: &str, pem: &str) -> JwtKeyConfig {
    JwtKeyConfig {
        kid: None,
        alg: alg.into(),
        secret: None,
        pem: Some(pem.into()),
    }
}

fn config() -> JwtConfig {
    let mut keys = vec![];
    for alg in ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512"] {
        keys.push(key(alg, RSA_PUBLIC));
    }
    keys.push(key("ES256", ES256_PUBLIC));
    keys.push(key("ES384", ES384_PUBLIC));
    keys.push(key("EdDSA", ED_PUBLIC));
    JwtConfig {
        hmac_secret: Some(SECRET.into()),
        keys,
        issuer: Some("https://issuer.example".into()),
        audience: Some("maas".into()),
        leeway_s: 5,
        ..JwtConfig::default()
    }
}

fn claims(extra: Value) -> Value {
    let now = get_current_timestamp();
    let mut c = json!({
        "tenant": "acme", "sub": "user-1", "iss": "https://issuer.example", "aud": "maas",
        "exp": now + 600, "nbf": now - 10,
    });
    if let (Some(c), Some(extra)) = (c.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            if v.is_null() {
                c.remove(k);
            } else {
                c.insert(k.clone(), v.clone());
            }
        }
    }
    c
}

fn signing_key(alg: Algorithm) -> EncodingKey {
    use jsonwebtoken::AlgorithmFamily as F;
    match alg.family() {
        F::Hmac => EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
        F::Rsa => EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap(),
        F::Ec if alg == Algorithm::ES256 => {
            EncodingKey::from_ec_pem(ES256_PRIVATE.as_bytes()).unwrap()
        }
        F::Ec => EncodingKey::from_ec_pem(ES384_PRIVATE.as_bytes()).unwrap(),
        F::Ed => EncodingKey::from_ed_pem(ED_PRIVATE.as_bytes()).unwrap(),
    }
}

fn sign(alg: Algorithm, kid: Option<&str>, c: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_string);
    encode(&header, c, &signing_key(alg)).unwrap()
}

fn rs(c: &Value) -> String {
    sign(Algorithm::RS256, None, c)
}

fn verifier_for(config: &JwtConfig) -> JwtVerifier {
    JwtVerifier::new(config, TTL, 100).unwrap().unwrap()
}

fn verifier() -> JwtVerifier {
    verifier_for(&config())
}

#[tokio::test]
async fn accepts_every_supported_algorithm() {
    let v = verifier();
    for alg in [
        "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256",
        "ES384", "EdDSA",
    ] {
        let alg: Algorithm = alg.parse().unwrap();
        let id = v.verify(&sign(alg, None, &claims(json!({})))).await;
        let id = id.unwrap_or_else(|e| panic!("{alg:?}: {e}"));
        assert_eq!(id.tenant, "acme", "{alg:?}");
        assert_eq!(id.subject.as_deref(), Some("user-1"));
        assert_eq!(id.models, None);
    }
}

#[test]
fn off_without_keys_and_bad_keys_are_errors() {
    assert!(JwtVerifier::new(&JwtConfig::default(), TTL, 1)
        .unwrap()
        .is_none());
    let bad = |k: JwtKeyConfig| {
        let c = JwtConfig {
            keys: vec![k],
            ..JwtConfig::default()
        };
        JwtVerifier::new(&c, TTL, 1).err().map(|e| e.to_string())
    };
    assert!(bad(key("RS256", "not a pem")).is_some());
    assert!(bad(key("ES256", RSA_PUBLIC)).is_some());
    assert!(bad(key("none", RSA_PUBLIC))
        .unwrap()
        .contains("unknown JWT algorithm"));
    let hmac_with_pem = bad(key("HS256", RSA_PUBLIC)).unwrap();
    assert!(
        hmac_with_pem.contains("needs a non-empty `secret`"),
        "{hmac_with_pem}"
    );
    let empty = JwtConfig {
        hmac_secret: Some(String::new()),
        ..JwtConfig::default()
    };
    assert!(JwtVerifier::new(&empty, TTL, 1).is_err());
}

#[tokio::test]
async fn checks_time_issuer_audience_tenant_and_models() {
    let v = verifier();
    let now = get_current_timestamp();
    let e = |c: Value| {
        let t = rs(&claims(c));
        let v = &v;
        async move { v.verify(&t).await.unwrap_err() }
    };
    assert_eq!(
        e(json!({"exp": now - 60})).await,
        JwtError::Invalid("expired")
    );
    assert_eq!(
        e(json!({"nbf": now + 60})).await,
        JwtError::Invalid("not yet valid (nbf)")
    );
    assert!(matches!(
        e(json!({"exp": null})).await,
        JwtError::Invalid(_)
    ));
    assert_eq!(
        e(json!({"iss": "https://evil.example"})).await,
        JwtError::Invalid("wrong issuer")
    );
    assert_eq!(
        e(json!({"aud": "other"})).await,
        JwtError::Invalid("wrong audience")
    );
    assert!(matches!(
        e(json!({"aud": null})).await,
        JwtError::Invalid(_)
    ));
    assert_eq!(e(json!({"tenant": null})).await, JwtError::NoTenant);
    assert_eq!(e(json!({"tenant": 7})).await, JwtError::NoTenant);
    assert_eq!(e(json!({"models": 7})).await, JwtError::BadModelsClaim);
    assert_eq!(
        e(json!({"models": ["a", 1]})).await,
        JwtError::BadModelsClaim
    );
    // Within the leeway.
    assert!(v
        .verify(&rs(&claims(json!({"exp": now - 2}))))
        .await
        .is_ok());
    assert!(v
        .verify(&rs(&claims(json!({"nbf": now + 2}))))
        .await
        .is_ok());
    // Model scopes, as an array or an OAuth-style string.
    let id = v
        .verify(&rs(&claims(json!({"models": ["digits", "seed"]}))))
        .await
        .unwrap();
    assert_eq!(
        id.models,
        Some(vec!["digits".to_string(), "seed".to_string()])
    );
    let id = v
        .verify(&rs(&claims(
            json!({"models": "digits  seed", "exp": now + 600}),
        )))
        .await
        .unwrap();
    assert_eq!(
        id.models,
        Some(vec!["digits".to_string(), "seed".to_string()])
    );
    assert_eq!(id.expires_at, now + 600);
}

#[tokio::test]
async fn configurable_tenant_claim() {
    let v = verifier_for(&JwtConfig {
        tenant_claim: "org".into(),
        ..config()
    });
    assert_eq!(
        v.verify(&rs(&claims(json!({})))).await.unwrap_err(),
        JwtError::NoTenant
    );
    let t = rs(&claims(json!({"org": "globex"})));
    assert_eq!(v.verify(&t).await.unwrap().tenant, "globex");
}

#[tokio::test]
async fn rejects_forgeries() {
    let v = verifier();
    // alg none.
    let none =
        "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJ0ZW5hbnQiOiJhY21lIiwiZXhwIjo0MTAyNDQ0ODAwfQ.";
    assert_eq!(v.verify(none).await.unwrap_err(), JwtError::BadHeader);
    // Algorithm confusion: HS256 signed with the RSA public key as the HMAC secret.
    let confused = encode(
        &Header::new(Algorithm::HS256),
        &claims(json!({})),
        &EncodingKey::from_secret(RSA_PUBLIC.as_bytes()).unwrap(),
    )
    .unwrap();
    assert_eq!(
        v.verify(&confused).await.unwrap_err(),
        JwtError::Invalid("bad signature")
    );
    let public_keys_only = verifier_for(&JwtConfig {
        hmac_secret: None,
        ..config()
    });
    assert_eq!(
        public_keys_only.verify(&confused).await.unwrap_err(),
        JwtError::AlgorithmNotAccepted
    );
    // Wrong HMAC secret.
    let other = encode(
        &Header::new(Algorithm::HS256),
        &claims(json!({})),
        &EncodingKey::from_secret(b"another secret").unwrap(),
    )
    .unwrap();
    assert_eq!(
        v.verify(&other).await.unwrap_err(),
        JwtError::Invalid("bad signature")
    );
    // Tampered payload.
    let good = rs(&claims(json!({})));
    let mut parts: Vec<&str> = good.split('.').collect();
    let forged_payload = rs(&claims(json!({"tenant": "globex"})));
    parts[1] = forged_payload.split('.').nth(1).unwrap();
    assert_eq!(
        v.verify(&parts.join(".")).await.unwrap_err(),
        JwtError::Invalid("bad signature")
    );
    // An algorithm with no key configured.
    let rs_only = verifier_for(&JwtConfig {
        hmac_secret: None,
        keys: vec![key("RS256", RSA_PUBLIC)],
        ..config()
    });
    let ps = sign(Algorithm::PS256, None, &claims(json!({})));
    assert_eq!(
        rs_only.verify(&ps).await.unwrap_err(),
        JwtError::AlgorithmNotAccepted
    );
    // Garbage, size.
    assert_eq!(
        v.verify("not.a.jwt").await.unwrap_err(),
        JwtError::BadHeader
    );
    assert_eq!(v.verify("").await.unwrap_err(), JwtError::BadHeader);
    let big = "a".repeat(8193);
    assert_eq!(v.verify(&big).await.unwrap_err(), JwtError::TooLarge);
}

#[tokio::test]
async fn kid_selects_the_key_and_pins_its_algorithm() {
    let mut a = key("RS256", RSA_PUBLIC);
    a.kid = Some("rsa-1".into());
    let mut b = key("ES256", ES256_PUBLIC);
    b.kid = Some("ec-1".into());
    let v = verifier_for(&JwtConfig {
        hmac_secret: None,
        keys: vec![a, b],
        ..config()
    });
    let c = claims(json!({}));
    assert!(v
        .verify(&sign(Algorithm::RS256, Some("rsa-1"), &c))
        .await
        .is_ok());
    assert!(v
        .verify(&sign(Algorithm::ES256, Some("ec-1"), &c))
        .await
        .is_ok());
    // The right algorithm under another key's kid.
    assert_eq!(
        v.verify(&sign(Algorithm::ES256, Some("rsa-1"), &c))
            .await
            .unwrap_err(),
        JwtError::AlgorithmNotAccepted
    );
    assert_eq!(
        v.verify(&sign(Algorithm::RS256, Some("nope"), &c))
            .await
            .unwrap_err(),
        JwtError::UnknownKid
    );
    // No kid: tried against every key of its algorithm.
    assert!(v.verify(&sign(Algorithm::RS256, None, &c)).await.is_ok());
}

#[tokio::test]
async fn jwks_file_is_reread_on_unknown_kid_at_most_once_per_interval() {
    use jsonwebtoken::jwk::Jwk;
    let dir = std::env::temp_dir().join(format!("maas-jwks-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("jwks.json");
    let jwk = |alg: Algorithm, kid: &str| {
        let mut j = Jwk::from_encoding_key(&signing_key(alg), alg).unwrap();
        j.common.key_id = Some(kid.into());
        j
    };
    let write = |keys: Vec<Jwk>| {
        std::fs::write(&path, serde_json::to_vec(&JwkSet { keys }).unwrap()).unwrap();
    };
    write(vec![jwk(Algorithm::RS256, "k1")]);
    let v = verifier_for(&JwtConfig {
        hmac_secret: None,
        keys: vec![],
        jwks_file: Some(path.clone()),
        jwks_min_refresh_interval_ms: 1000,
        ..config()
    });
    let c = claims(json!({}));
    // Signed up front: signing is slow in a debug build, and the test is about timing.
    let flood: Vec<String> = (0..50)
        .map(|i| sign(Algorithm::RS256, Some(&format!("made-up-{i}")), &c))
        .collect();
    let t2 = sign(Algorithm::ES256, Some("k2"), &c);
    let t3 = sign(Algorithm::RS256, Some("still-unknown"), &c);
    assert!(v
        .verify(&sign(Algorithm::RS256, Some("k1"), &c))
        .await
        .is_ok());
    assert_eq!(v.jwks_fetches(), 0);
    // The issuer rotates in an EC key.
    write(vec![
        jwk(Algorithm::RS256, "k1"),
        jwk(Algorithm::ES256, "k2"),
    ]);
    assert!(v.verify(&t2).await.is_ok());
    assert_eq!(v.jwks_fetches(), 1);
    // A flood of unknown kids: no further read within the interval.
    for t in &flood {
        assert_eq!(v.verify(t).await.unwrap_err(), JwtError::UnknownKid);
    }
    assert_eq!(v.jwks_fetches(), 1);
    tokio::time::sleep(Duration::from_millis(1050)).await;
    assert_eq!(v.verify(&t3).await.unwrap_err(), JwtError::UnknownKid);
    assert_eq!(v.jwks_fetches(), 2);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn verified_tokens_are_cached_until_exp() {
    let v = verifier();
    let now = get_current_timestamp();
    let t = rs(&claims(json!({"exp": now + 600})));
    let a = v.verify(&t).await.unwrap();
    let b = v.verify(&t).await.unwrap();
    assert!(Arc::ptr_eq(&a, &b), "second verification is a cache hit");
    // A token expiring now (inside the leeway) is accepted but not cached.
    let t = rs(&claims(json!({"exp": now})));
    assert!(v.verify(&t).await.is_ok());
    let digest: [u8; 32] = Sha256::digest(t.as_bytes()).into();
    assert!(v.cached(&digest).is_none());
}

/// Property tests over arbitrary bytes: whatever a client puts in a token's header, claims or
/// signature, verification answers a typed [`JwtError`] (or, for a well-signed token with
/// valid claims, an identity) and never panics.
mod fuzz {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    use proptest::prelude::*;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    /// `header.claims` as given (base64url of the bytes), signed with HS256 and the secret.
    fn hs256(header: &[u8], claims: &[u8]) -> String {
        let message = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(claims)
        );
        let key = EncodingKey::from_secret(SECRET.as_bytes()).unwrap();
        let sig = jsonwebtoken::crypto::sign(message.as_bytes(), &key, Algorithm::HS256).unwrap();
        format!("{message}.{sig}")
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            ".{0,12}".prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                proptest::collection::btree_map("[a-z]{1,6}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_tokens_are_refused(token in ".{0,300}") {
            let v = verifier();
            prop_assert!(runtime().block_on(v.verify(&token)).is_err());
        }

        #[test]
        fn arbitrary_signed_header_and_claims_bytes_never_panic(
            header in proptest::collection::vec(any::<u8>(), 0..200),
            claims in proptest::collection::vec(any::<u8>(), 0..200),
        ) {
            let v = verifier();
            let _ = runtime().block_on(v.verify(&hs256(&header, &claims)));
        }

        #[test]
        fn arbitrary_claim_values_are_typed_errors(
            field in prop_oneof![
                Just("tenant"), Just("exp"), Just("nbf"), Just("iss"), Just("aud"),
                Just("models"), Just("sub"),
            ],
            value in json_value(),
            header_kid in proptest::option::of(json_value()),
        ) {
            let mut c = claims(json!({}));
            c[field] = value.clone();
            let mut header = json!({"alg": "HS256", "typ": "JWT"});
            if let Some(kid) = header_kid {
                header["kid"] = kid;
            }
            let token = hs256(header.to_string().as_bytes(), c.to_string().as_bytes());
            let v = verifier();
            match runtime().block_on(v.verify(&token)) {
                Ok(identity) => prop_assert_eq!(Some(identity.tenant.as_str()), c["tenant"].as_str()),
                Err(e) => prop_assert!(!e.to_string().is_empty()),
            }
        }
    }
}
