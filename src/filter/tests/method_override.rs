//! Method-override headers on blob paths: an intermediary that honours them could turn a
//! `POST /v2/<name>/blobs/<digest>` into the blob delete the filter refuses, so the filter
//! refuses such a request where its verdict depends on the method (manifests and blob paths).
use super::fake::{on_headers, worker, FakeHost};
use crate::filter::{Action, Filter};

const POLICY: &str = r#"{"upstream": {"cluster": "registry"}, "global": {"immutable_tags": true}}"#;
const BLOB: &str = "/v2/app/blobs/sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

#[test]
fn an_override_header_on_a_blob_path_is_refused_naming_it() {
    for header in ["x-http-method-override", "x-http-method", "x-method-override"] {
        for (method, path) in [
            ("POST", BLOB),
            ("GET", BLOB),
            ("HEAD", "/v2/app/BLOBS/x"),
            ("POST", "/v2/app/blobs/uploads/"),
            ("PATCH", "/v2/app/blob%73/x"),
        ] {
            let h = FakeHost::new();
            let mut f = Filter::new(Some(worker(&h, POLICY)));
            h.request(method, path, &[(header, "DELETE")]);
            assert_eq!(on_headers(&mut f, &h, false), Action::Pause, "{header} {method} {path}");
            let r = h.reply().expect("refused");
            assert_eq!(r.status, 400, "{header} {method} {path}");
            let err = r.json()["errors"][0].clone();
            assert_eq!(err["code"], "UNSUPPORTED");
            assert!(err["message"].as_str().unwrap().to_lowercase().contains("override"), "{err}");
        }
    }
}

#[test]
fn an_unreadable_override_header_on_a_blob_path_counts_as_present() {
    let h = FakeHost::new();
    let mut f = Filter::new(Some(worker(&h, POLICY)));
    h.request("POST", BLOB, &[]);
    h.unreadable.borrow_mut().push("x-method-override".into());
    assert_eq!(on_headers(&mut f, &h, false), Action::Pause);
    assert_eq!(h.reply().expect("refused").status, 400);
}

#[test]
fn blob_traffic_without_override_headers_passes_untouched() {
    for (method, path) in [
        ("GET", BLOB),
        ("HEAD", BLOB),
        ("POST", "/v2/app/blobs/uploads/"),
        ("PATCH", "/v2/app/blobs/uploads/u"),
        ("PUT", "/v2/app/blobs/uploads/u?digest=x"),
    ] {
        let h = FakeHost::new();
        let mut f = Filter::new(Some(worker(&h, POLICY)));
        h.request(method, path, &[]);
        assert_eq!(on_headers(&mut f, &h, false), Action::Continue, "{method} {path}");
        assert!(h.reply().is_none());
    }
}

#[test]
fn a_method_query_parameter_on_a_manifest_or_blob_path_is_refused() {
    for q in ["_method=DELETE", "_METHOD=delete", "%5fmethod=DELETE", "a=1&_Method=PUT", "_method"] {
        for (method, path) in [
            ("GET", BLOB),
            ("POST", BLOB),
            ("GET", "/v2/app/manifests/v1"),
            ("POST", "/v2/app/tags/reference/v1"),
        ] {
            let h = FakeHost::new();
            let mut f = Filter::new(Some(worker(&h, POLICY)));
            h.request(method, &format!("{path}?{q}"), &[]);
            assert_eq!(on_headers(&mut f, &h, false), Action::Pause, "{method} {path}?{q}");
            assert_eq!(h.reply().expect("refused").status, 400, "{method} {path}?{q}");
        }
    }
    let h = FakeHost::new();
    let mut f = Filter::new(Some(worker(&h, POLICY)));
    h.request("GET", &format!("{BLOB}?method=x"), &[]);
    assert_eq!(on_headers(&mut f, &h, false), Action::Continue);
}
