//! GitLab's registry deletes a tag with `DELETE /v2/<name>/tags/reference/<tag>`: the filter
//! judges it as `DELETE /v2/<name>/manifests/<tag>`.
use crate::request::{classify, Reference, Request};

#[test]
fn a_gitlab_tag_delete_is_a_tag_delete() {
    for p in ["/v2/team/app/tags/reference/v1", "/v2/team/app/TAGS/Reference/v1", "/v2/team%2Fapp/tags/%72eference/v%31?x=1"] {
        assert_eq!(
            classify("DELETE", p),
            Request::ManifestDelete { repository: "team/app".into(), reference: Reference::Tag("v1".into()) },
            "{p}"
        );
        assert!(crate::request::may_name_manifests(p), "{p}");
        assert_eq!(classify("GET", p), Request::Other, "{p}");
    }
    for p in ["/v2/App/tags/reference/v1", "/v2/app/tags/reference/", "/v2/app/tags/reference/a/b", "//v2/app/tags/reference/v1", "/v2/app/tags/reference/v%zz"] {
        assert!(matches!(classify("DELETE", p), Request::Invalid(_)), "{p}");
    }
}

#[test]
fn the_filter_refuses_a_gitlab_delete_of_an_immutable_tag_as_it_does_a_manifests_one() {
    use super::fake::{on_headers, worker, FakeHost};
    use crate::filter::{Action, Filter};
    let policy = r#"{"upstream": {"cluster": "registry"}, "global": {"immutable_tags": true}}"#;
    let mut seen = Vec::new();
    for path in ["/v2/app/manifests/v1", "/v2/app/tags/reference/v1", "/v2/app/Tags/Reference/v%31"] {
        let h = FakeHost::new();
        let mut f = Filter::new(Some(worker(&h, policy)));
        h.request("DELETE", path, &[]);
        assert_eq!(on_headers(&mut f, &h, true), Action::Pause, "{path}");
        let r = h.reply().expect("refused");
        assert!(r.status >= 400, "{path}");
        seen.push((r.status, r.json()["errors"][0]["code"].clone()));
    }
    assert!(seen.windows(2).all(|w| w[0] == w[1]), "{seen:?}");
}
