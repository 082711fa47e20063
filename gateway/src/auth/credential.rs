//! How a credential is read off a request: `Authorization: Bearer <credential>` (RFC 6750
//! section 2.1, scheme case-insensitive) or `x-api-key: <credential>`.

use pingora::http::RequestHeader;

use crate::error::GatewayError;

/// Extract the presented key from the request headers.
///
/// `Authorization: Bearer <key>` (scheme case-insensitive) or `x-api-key: <key>`; both may be
/// sent only with the same key.
///
/// # Errors
/// [`GatewayError::MissingApiKey`] when neither header is present;
/// [`GatewayError::MalformedAuthorization`] for another scheme or non-text header;
/// [`GatewayError::ConflictingCredentials`] when the two headers carry different values.
pub fn presented_key(req: &RequestHeader) -> Result<String, GatewayError> {
    if let Some(value) = req.headers.get(http::header::AUTHORIZATION) {
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
        let token = token.trim();
        if token.is_empty() {
            return Err(GatewayError::MissingApiKey);
        }
        if let Some(other) = req.headers.get("x-api-key") {
            if other.to_str().ok().map(str::trim) != Some(token) {
                return Err(GatewayError::ConflictingCredentials);
            }
        }
        return Ok(token.to_string());
    }
    if let Some(value) = req.headers.get("x-api-key") {
        let token = value
            .to_str()
            .map_err(|_| GatewayError::InvalidApiKey)?
            .trim();
        if token.is_empty() {
            return Err(GatewayError::MissingApiKey);
        }
        return Ok(token.to_string());
    }
    Err(GatewayError::MissingApiKey)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("POST", b"/v2/models/m/infer", None).unwrap();
        for (k, v) in headers {
            r.insert_header(k.to_string(), *v).unwrap();
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
            presented_key(&req(&[
                ("authorization", "Bearer abc"),
                ("x-api-key", "xyz")
            ])),
            Err(GatewayError::ConflictingCredentials)
        );
        assert_eq!(
            presented_key(&req(&[
                ("authorization", "Bearer abc"),
                ("x-api-key", " abc")
            ]))
            .unwrap(),
            "abc"
        );
    }
}
