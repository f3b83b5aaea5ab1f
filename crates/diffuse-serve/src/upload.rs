//! The form of `POST /v1/images/edits` and `/v1/images/variations` (multipart/form-data, as
//! OpenAI's image edit API): the files `image` and `mask`, and the generation request's fields as
//! text (`n=2`, `class_label=3`, `strength=0.6`, `prompt=a red apple`). Parsed with `multer`, the parser axum's own
//! `Multipart` extractor wraps, from the body already read under the upload limit.

use crate::request::{self, ApiError, EditUpload, Request, EDIT_FIELDS, FIELDS};
use crate::ServeConfig;
use axum::body::Bytes;
use serde_json::{Map, Value};

/// Which edit endpoint a form was sent to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `/v1/images/edits`: image, optional mask.
    Edits,
    /// `/v1/images/variations`: image only; the n images differ by their seeds.
    Variations,
}

impl Endpoint {
    fn allowed(self) -> Vec<&'static str> {
        let mut all: Vec<&str> = FIELDS.to_vec();
        all.extend(
            EDIT_FIELDS
                .iter()
                .filter(|f| self == Endpoint::Edits || **f != "mask"),
        );
        all
    }
}

/// Fields whose text is a string as sent; the others are read as JSON values (`2`, `0.5`,
/// `true`), so that one parser checks both bodies.
const TEXT_FIELDS: [&str; 5] = [
    "model",
    "sampler",
    "response_format",
    "prompt",
    "negative_prompt",
];

/// Parses a multipart body into a [`Request`] with its [`EditUpload`]; every error is a 400
/// naming its field (`body` for a form that does not parse).
pub async fn parse(
    content_type: Option<&str>,
    body: Bytes,
    cfg: &ServeConfig,
    endpoint: Endpoint,
) -> Result<Request, ApiError> {
    let form_hint = "send it as multipart/form-data, e.g. curl -F image=@in.png -F strength=0.6";
    let boundary = content_type
        .and_then(|ct| multer::parse_boundary(ct).ok())
        .ok_or_else(|| {
            ApiError::bad(
                "body",
                format!(
                    "the body is {}, not multipart/form-data: {form_hint}",
                    content_type.unwrap_or("of no content type")
                ),
            )
        })?;
    let stream = futures_util::stream::once(async move { Ok::<_, std::io::Error>(body) });
    let mut form = multer::Multipart::new(stream, boundary);
    let allowed = endpoint.allowed();
    let mut text = Map::new();
    let (mut image, mut mask) = (None, None);
    let broken = |e: multer::Error| ApiError::bad("body", format!("a broken form: {e}"));
    while let Some(field) = form.next_field().await.map_err(broken)? {
        let name = field
            .name()
            .ok_or_else(|| ApiError::bad("body", "a form field without a name"))?
            .to_string();
        request::check_fields(std::iter::once(name.as_str()), &allowed)?;
        if text.contains_key(&name)
            || (name == "image" && image.is_some())
            || (name == "mask" && mask.is_some())
        {
            return Err(ApiError::bad(&name, format!("`{name}` is given twice")));
        }
        let bytes = field.bytes().await.map_err(broken)?;
        match name.as_str() {
            "image" => image = Some(bytes.to_vec()),
            "mask" => mask = Some(bytes.to_vec()),
            _ => {
                let s = String::from_utf8(bytes.to_vec())
                    .map_err(|_| ApiError::bad(&name, format!("`{name}` is not UTF-8 text")))?;
                let v = if TEXT_FIELDS.contains(&name.as_str()) {
                    Value::String(s)
                } else if name == "timesteps" && !s.trim_start().starts_with('[') {
                    // `999,759,499` as well as `[999, 759, 499]`.
                    serde_json::from_str(&format!("[{}]", s.trim())).unwrap_or(Value::String(s))
                } else {
                    serde_json::from_str(s.trim()).unwrap_or(Value::String(s))
                };
                text.insert(name, v);
            }
        }
    }
    let image = image.ok_or_else(|| {
        ApiError::bad(
            "image",
            format!("the image to edit is required as the file field `image`: {form_hint}"),
        )
    })?;
    let mut req = request::parse_fields(&text, cfg)?;
    req.edit = Some(EditUpload {
        strength: request::strength(&text, mask.is_some())?,
        image,
        mask,
    });
    Ok(req)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(parts: &[(&str, Option<&str>, &[u8])]) -> (String, Bytes) {
        let b = "XyZ";
        let mut body = Vec::new();
        for (name, file, data) in parts {
            body.extend(
                format!("--{b}\r\nContent-Disposition: form-data; name=\"{name}\"").bytes(),
            );
            if let Some(f) = file {
                body.extend(format!("; filename=\"{f}\"\r\nContent-Type: image/png").bytes());
            }
            body.extend(b"\r\n\r\n");
            body.extend(*data);
            body.extend(b"\r\n");
        }
        body.extend(format!("--{b}--\r\n").bytes());
        (format!("multipart/form-data; boundary={b}"), body.into())
    }

    async fn parse_parts(
        parts: &[(&str, Option<&str>, &[u8])],
        endpoint: Endpoint,
    ) -> Result<Request, ApiError> {
        let (ct, body) = form(parts);
        parse(Some(&ct), body, &ServeConfig::default(), endpoint).await
    }

    #[tokio::test]
    async fn text_fields_are_typed_and_files_kept() {
        let r = parse_parts(
            &[
                ("image", Some("a.png"), b"PNGDATA"),
                ("mask", Some("m.png"), b"MASK"),
                ("n", None, b"3"),
                ("class_label", None, b"7"),
                ("sampler", None, b"ddim"),
                ("model", None, b"123"),
                ("stream", None, b"true"),
                ("timesteps", None, b"999, 499"),
                ("gamma", None, b"0.5"),
                // Prompts are text as sent, whatever JSON they look like.
                ("prompt", None, b"42"),
                ("negative_prompt", None, b"null"),
            ],
            Endpoint::Edits,
        )
        .await
        .unwrap();
        assert_eq!((r.n, r.class_label, r.stream), (3, Some(7), true));
        assert_eq!(
            (r.timesteps.as_deref(), r.gamma),
            (Some(&[999.0, 499.0][..]), 0.5)
        );
        assert_eq!(
            (r.sampler.as_deref(), r.model.as_str()),
            (Some("ddim"), "123")
        );
        assert_eq!(
            (r.prompt.as_deref(), r.negative_prompt.as_deref()),
            (Some("42"), Some("null"))
        );
        let e = r.edit.unwrap();
        assert_eq!(
            (e.image.as_slice(), e.mask.as_deref()),
            (&b"PNGDATA"[..], Some(&b"MASK"[..]))
        );
        // A mask makes the default strength 1 (inpainting), else 0.8 (image-to-image).
        assert_eq!(e.strength, 1.0);
        let r = parse_parts(&[("image", Some("a.png"), b"x")], Endpoint::Variations)
            .await
            .unwrap();
        assert_eq!(r.edit.unwrap().strength, 0.8);
    }

    #[tokio::test]
    async fn errors_name_their_field() {
        let field = |r: Result<Request, ApiError>| r.unwrap_err().field.unwrap();
        let img: (&str, Option<&str>, &[u8]) = ("image", Some("a.png"), b"x");
        assert_eq!(
            field(parse_parts(&[("n", None, b"2")], Endpoint::Edits).await),
            "image"
        );
        assert_eq!(
            field(parse_parts(&[img, ("mask", Some("m.png"), b"m")], Endpoint::Variations).await),
            "mask"
        );
        assert_eq!(
            field(parse_parts(&[img, ("n", None, b"two")], Endpoint::Edits).await),
            "n"
        );
        assert_eq!(
            field(parse_parts(&[img, ("strength", None, b"1.5")], Endpoint::Edits).await),
            "strength"
        );
        assert_eq!(
            field(parse_parts(&[img, ("colour", None, b"red")], Endpoint::Edits).await),
            "colour"
        );
        assert_eq!(
            field(parse_parts(&[img, ("timesteps", None, b"999,x")], Endpoint::Edits).await),
            "timesteps"
        );
        assert_eq!(
            field(parse_parts(&[img, ("gamma", None, b"2")], Endpoint::Edits).await),
            "gamma"
        );
        assert_eq!(
            field(parse_parts(&[img, img], Endpoint::Edits).await),
            "image"
        );
        let cfg = ServeConfig::default();
        let e = parse(
            Some("application/json"),
            Bytes::from_static(b"{}"),
            &cfg,
            Endpoint::Edits,
        )
        .await
        .unwrap_err();
        assert_eq!(e.field.as_deref(), Some("body"));
        assert!(e.message.contains("curl -F image=@"), "{}", e.message);
        let e = parse(
            Some("multipart/form-data; boundary=XyZ"),
            Bytes::from_static(b"--XyZ\r\ngarbage"),
            &cfg,
            Endpoint::Edits,
        )
        .await
        .unwrap_err();
        assert_eq!(e.field.as_deref(), Some("body"));
    }
}
