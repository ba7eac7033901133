//! A digest delete's check on one worker, with the push helpers: the tags list page bound, a
//! tag whose HEAD names no digest (its manifest fetched and hashed, up to the size limit), no
//! check where no tag can be immutable, and the map forgetting the digest's tags.
use super::*;

#[test]
fn a_delete_by_digest_makes_the_map_forget_its_tags() {
    let h = FakeHost::new();
    let w = worker(&h, POLICY);
    assert_eq!(push(&h, &w, "v1", M1, None).status, 201);
    // The registry deletes the manifest (no tag of the repository holds it any more).
    let mut f = Filter::new(Some(w.clone()));
    h.request("DELETE", &format!("/v2/app/manifests/{}", sha(M1)), &[]);
    assert_eq!(on_headers(&mut f, &h, true), Action::Pause);
    let resumes = h.resumes.get();
    respond(&mut f, &h, answer(200, &[("content-type", "application/json")], br#"{"name":"app","tags":[]}"#));
    assert_eq!(h.resumes.get(), resumes + 1);
    *h.response_headers.borrow_mut() = vec![(":status".into(), "202".into())];
    f.on_response_headers(&h);
    f.on_done(&h);
    // The next push of v1 asks the registry again instead of trusting the map.
    let heads = h.calls_with("HEAD").len();
    let mut f = Filter::new(Some(w.clone()));
    assert_eq!(put_headers(&mut f, &h, "v1", M2), Action::Pause);
    assert_eq!(h.calls_with("HEAD").len(), heads + 1);
}

#[test]
fn a_tags_list_page_over_the_bound_refuses_the_delete() {
    use crate::filter::delete::MAX_PAGE_BYTES;
    let h = FakeHost::new();
    let w = worker(&h, POLICY);
    let page = |size: usize| {
        let mut b = br#"{"name":"app","tags":[]"#.to_vec();
        b.resize(size - 1, b' ');
        b.push(b'}');
        b
    };
    // Exactly the bound: read, and the delete goes on (no tag holds the digest).
    let mut f = Filter::new(Some(w.clone()));
    h.request("DELETE", &format!("/v2/app/manifests/{}", sha(M1)), &[]);
    assert_eq!(on_headers(&mut f, &h, true), Action::Pause);
    let resumes = h.resumes.get();
    respond(&mut f, &h, answer(200, &[("content-type", "application/json")], &page(MAX_PAGE_BYTES)));
    assert_eq!(h.resumes.get(), resumes + 1);
    assert!(h.reply().is_none());
    // One byte more: the filter cannot judge, so it refuses (503), never lets the delete through.
    let h = FakeHost::new();
    let w = worker(&h, POLICY);
    let mut f = Filter::new(Some(w.clone()));
    h.request("DELETE", &format!("/v2/app/manifests/{}", sha(M1)), &[]);
    assert_eq!(on_headers(&mut f, &h, true), Action::Pause);
    respond(&mut f, &h, answer(200, &[("content-type", "application/json")], &page(MAX_PAGE_BYTES + 1)));
    assert_eq!(h.resumes.get(), 0);
    let r = h.reply().unwrap();
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["errors"][0]["code"], "UNAVAILABLE");
}

#[test]
fn a_delete_by_digest_gets_the_manifests_of_tags_whose_head_has_no_digest() {
    let h = FakeHost::new();
    let w = worker(&h, POLICY);
    let mut f = Filter::new(Some(w.clone()));
    h.request("DELETE", &format!("/v2/app/manifests/{}", sha(M1)), &[]);
    assert_eq!(on_headers(&mut f, &h, true), Action::Pause);
    respond(
        &mut f,
        &h,
        answer(200, &[("content-type", "application/json")], br#"{"name":"app","tags":["v1"]}"#),
    );
    respond(&mut f, &h, head_without_digest());
    assert_eq!(h.last_call().unwrap().header(":method"), Some("GET"));
    respond(&mut f, &h, answer(200, &[], M1));
    let r = h.reply().unwrap();
    assert_eq!(r.status, 409, "{:?}", r.json());
    assert_eq!(h.resumes.get(), 0);
}

#[test]
fn a_digest_delete_where_no_tag_can_be_immutable_is_not_checked() {
    let h = FakeHost::new();
    let w = worker(
        &h,
        r#"{"upstream": {"cluster": "registry"}, "rules": [{"projects": "prod", "repositories": {"matching": "**"}, "tags": {"matching": "**"}}]}"#,
    );
    let mut f = Filter::new(Some(w.clone()));
    h.request("DELETE", &format!("/v2/app/manifests/{}", sha(M1)), &[]);
    assert_eq!(on_headers(&mut f, &h, true), Action::Continue);
    assert!(h.calls.borrow().is_empty(), "no tags listing to pay for");
    assert!(f.idle());
    // Where a rule may protect a tag, the listing is read first.
    let mut f = Filter::new(Some(w.clone()));
    h.request("DELETE", &format!("/v2/prod/app/manifests/{}", sha(M1)), &[]);
    assert_eq!(on_headers(&mut f, &h, true), Action::Pause);
    assert_eq!(h.calls_with("GET").len(), 1);
}

#[test]
fn a_delete_by_digest_hashes_a_manifest_of_exactly_the_limit() {
    let deleted = vec![b' '; 1024];
    let mut other = deleted.clone();
    other[0] = b'\n';
    for (held, refused) in [(&deleted, true), (&other, false)] {
        let h = FakeHost::new();
        let w = worker(&h, LIMIT_1K);
        let mut f = Filter::new(Some(w.clone()));
        h.request("DELETE", &format!("/v2/app/manifests/{}", sha(&deleted)), &[]);
        assert_eq!(on_headers(&mut f, &h, true), Action::Pause);
        respond(
            &mut f,
            &h,
            answer(200, &[("content-type", "application/json")], br#"{"name":"app","tags":["v1"]}"#),
        );
        respond(&mut f, &h, head_without_digest());
        respond(&mut f, &h, answer(200, &[("content-type", CT.1)], held));
        assert_eq!(h.reply().map(|r| r.status), refused.then_some(409), "{:?}", h.reply().map(|r| r.json()));
        assert_eq!(h.resumes.get(), u32::from(!refused));
    }
}
