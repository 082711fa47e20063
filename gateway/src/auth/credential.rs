//! How a credential is read off a request: `Authorization: Bearer <credential>` (RFC 6750
//! section 2.1, scheme case-insensitive) or `x-api-key: <credential>`.

use pingora::http::RequestHeader;

use crate::error::GatewayError;

/// Extract the one credential presented in the request headers.
///
/// Exactly one `Authorization: Bearer <credential>` (scheme case-insensitive) or one
/// `x-api-key: <credential>` header. A request carrying more than one credential header is
/// ambiguous and refused whatever the values: a repeated `Authorization`, a repeated
/// `x-api-key`, or both kinds (RFC 6750 section 2: a client must not use more than one method
/// to transmit the token in each request).
///
/// # Errors
/// [`GatewayError::MissingApiKey`] when neither header is present (or the credential is empty);
/// [`GatewayError::MalformedAuthorization`] for another scheme or non-text header;
/// [`GatewayError::InvalidApiKey`] for an `x-api-key` that is not text;
/// [`GatewayError::ConflictingCredentials`] when more than one credential header is present.
pub fn presented_key(req: &RequestHeader) -> Result<String, GatewayError> {
    let mut authorization = req.headers.get_all(http::header::AUTHORIZATION).iter();
    let mut api_key = req.headers.get_all(API_KEY).iter();
    let (first_auth, first_key) = (authorization.next(), api_key.next());
    let presented = usize::from(first_auth.is_some())
        + usize::from(first_key.is_some())
        + authorization.count()
        + api_key.count();
    if presented > 1 {
        return Err(GatewayError::ConflictingCredentials);
    }
    if let Some(value) = first_auth {
        let value = value
            .to_str()
            .map_err(|_| GatewayError::MalformedAuthorization)?
            .trim();
        let (scheme, token) = value
            .split_once(' ')
            .ok_or(GatewayError::MalformedAuthorization)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(GatewayError::MalformedAuthorization);
        }
        return non_empty(token);
    }
    if let Some(value) = first_key {
        let token = value.to_str().map_err(|_| GatewayError::InvalidApiKey)?;
        return non_empty(token);
    }
    Err(GatewayError::MissingApiKey)
}

/// The header that carries an API key without a scheme.
const API_KEY: &str = "x-api-key";

fn non_empty(token: &str) -> Result<String, GatewayError> {
    let token = token.trim();
    if token.is_empty() {
        return Err(GatewayError::MissingApiKey);
    }
    Ok(token.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("POST", b"/v2/models/m/infer", None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    #[test]
    fn presented_key_headers() {
        assert_eq!(presented_key(&req(&[])), Err(GatewayError::MissingApiKey));
        assert_eq!(
            presented_key(&req(&[("authorization", "Bearer abc")])).unwrap(),
            "abc"
        );
        assert_eq!(
            presented_key(&req(&[("authorization", "bearer  abc ")])).unwrap(),
            "abc"
        );
        assert_eq!(presented_key(&req(&[("x-api-key", "xyz")])).unwrap(), "xyz");
        assert_eq!(
            presented_key(&req(&[("authorization", "Basic Zm9vOmJhcg==")])),
            Err(GatewayError::MalformedAuthorization)
        );
        assert_eq!(
            presented_key(&req(&[("authorization", "Bearer")])),
            Err(GatewayError::MalformedAuthorization)
        );
        assert_eq!(
            presented_key(&req(&[("x-api-key", " ")])),
            Err(GatewayError::MissingApiKey)
        );
    }

    #[test]
    fn more_than_one_credential_is_refused_whatever_the_values() {
        for headers in [
            &[("authorization", "Bearer abc"), ("x-api-key", "xyz")][..],
            &[("authorization", "Bearer abc"), ("x-api-key", " abc")],
            &[
                ("authorization", "Bearer abc"),
                ("authorization", "Bearer xyz"),
            ],
            &[
                ("authorization", "Bearer abc"),
                ("authorization", "Bearer abc"),
            ],
            &[
                ("authorization", "Bearer abc"),
                ("authorization", "Basic eA=="),
            ],
            &[("x-api-key", "abc"), ("x-api-key", "xyz")],
            &[("x-api-key", "abc"), ("x-api-key", "abc")],
            &[("x-api-key", "abc"), ("x-api-key", "")],
        ] {
            assert_eq!(
                presented_key(&req(headers)),
                Err(GatewayError::ConflictingCredentials),
                "{headers:?}"
            );
        }
    }
}
