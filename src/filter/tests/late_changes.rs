//! Late changes from the root queue or a late answer (an attacker's read of the merged claims
//! protocol): a forget or a commit that lands after a newer change must not erase or outrank it.
use super::sequences::*;

const V1: &str = "v1";

/// A granted (break-glass) delete's `forget` erases whatever committed change it finds when it
/// finally lands, even one committed after the delete (a re-push of the tag). A stale "absent"
/// view then overwrites the re-pushed tag without break-glass.
#[test]
fn atk_late_forget_erases_a_later_commit() {
    {
        let etcd = true;
        let world = World::new(ETCD_BG);
        let (a, b) = (world.replica(), world.replica());
        assert_eq!(world.push(&a, V1, X, &[BOB]).status, 201);
        run_for(&world, &[&a, &b], 500);
        // Admin deletes v1 through A (break-glass, logged).
        let mut d = world.open(&a, "DELETE", "/v2/app/manifests/v1", &[ADMIN, REASON]);
        assert!(d.h.reply().is_none(), "granted: {:?}", d.h.reply());
        world.reg.tags.borrow_mut().remove(V1);
        world.reg.history.borrow_mut().push((V1.into(), String::new()));
        *d.h.response_headers.borrow_mut() = vec![(":status".into(), "202".into())];
        d.f.on_response_headers(&d.h);
        // A's forget is queued; its etcd calls are slow (A does not get to it for a while).
        // Bob's push F of Y through B: HEAD now says absent; its last byte is held.
        let mut f = world.open_put(&b, V1, Y, &[BOB]);
        world.pump(&mut f, false);
        world.body(&mut f, &Y[..Y.len() - 1], false);
        world.pump(&mut f, false);
        // Bob re-pushes X through B: a first push of the (now absent) tag, committed.
        assert_eq!(world.push(&b, V1, X, &[BOB]).status, 201);
        run_for(&world, &[&b], 500);
        // A's forget lands now.
        run_for(&world, &[&a, &b], 500);
        // F's stale "absent" view is 1.x s old (well within half the TTL).
        world.body(&mut f, &Y[Y.len() - 1..], true);
        world.pump(&mut f, false);
        let r = reply(&f);
        eprintln!("etcd={etcd} F: {} {}; history {:?}", r.status, String::from_utf8_lossy(&r.body), world.reg.history.borrow());
        assert_eq!(world.reg.holds(V1), Some(sha(X)), "v1 changed X -> Y without break-glass");
    }
}

const SHARED_BG: &str = r#"{"upstream": {"cluster": "registry"}, "global": {"immutable_tags": true},
  "break_glass": {"principals": ["admin"], "repositories": ["app"], "actions": ["overwrite", "delete"]}}"#;

/// The same with every replica ticking normally (etcd): A's forget reads the record, its
/// rewrite reaches etcd after B's re-push committed (a late call): the compare fails, the
/// forget is applied again to what it finds, the new commit. Shared data: the delete's 202
/// reaches the filter after the re-push committed (forget is applied at the answer).
#[test]
fn atk_forget_reapplied_to_a_later_commit() {
    let mut broken = Vec::new();
    for policy in [ETCD_BG, SHARED_BG] {
        let etcd = policy == ETCD_BG;
        let world = World::new(policy);
        let (a, b) = (world.replica(), world.replica());
        let b = &b; // shared data: another worker of the same Envoy (same process, same shared data)
        assert_eq!(world.push(&a, V1, X, &[BOB]).status, 201);
        run_for(&world, &[&a, b], 500);
        let mut d = world.open(&a, "DELETE", "/v2/app/manifests/v1", &[ADMIN, REASON]);
        assert!(d.h.reply().is_none(), "granted: {:?}", d.h.reply());
        world.reg.tags.borrow_mut().remove(V1);
        world.reg.history.borrow_mut().push((V1.into(), String::new()));
        let mut held = Vec::new();
        if etcd {
            *d.h.response_headers.borrow_mut() = vec![(":status".into(), "202".into())];
            d.f.on_response_headers(&d.h);
            world.advance(250);
            // A's tick: the forget's read is answered, its write is sent and travels slowly.
            crate::filter::claims::etcd::tick(&a.root, &a.w);
            loop {
                let Some(token) = a.root.pending.borrow_mut().pop_front() else { break };
                let call = a.root.call_of(token);
                let body = String::from_utf8_lossy(call.body.as_deref().unwrap_or_default()).to_string();
                if body.contains("\"target\":\"MOD\"") {
                    held.push(token);
                    continue;
                }
                let reply = world.etcd.answer(&call);
                let size = reply.body.len();
                a.root.set_answer(Some(reply));
                root_response(&a.root, &a.w, token, size);
                a.root.set_answer(None);
                crate::filter::claims::etcd::tick(&a.root, &a.w);
            }
            assert_eq!(held.len(), 1, "the forget's write is in flight");
        }
        let mut f = world.open_put(b, V1, Y, &[BOB]);
        world.pump(&mut f, false);
        world.body(&mut f, &Y[..Y.len() - 1], false);
        world.pump(&mut f, false);
        assert_eq!(world.push(b, V1, X, &[BOB]).status, 201, "a first push of the tag again");
        run_for(&world, &[b], 500);
        if etcd {
            for token in held {
                let call = a.root.call_of(token);
                let reply = world.etcd.answer(&call);
                let size = reply.body.len();
                a.root.set_answer(Some(reply));
                root_response(&a.root, &a.w, token, size);
                a.root.set_answer(None);
            }
            world.answer_root(&a);
        } else {
            *d.h.response_headers.borrow_mut() = vec![(":status".into(), "202".into())];
            d.f.on_response_headers(&d.h);
        }
        run_for(&world, &[&a, b], 500);
        world.body(&mut f, &Y[Y.len() - 1..], true);
        world.pump(&mut f, false);
        let r = reply(&f);
        eprintln!("etcd={etcd} F: {} {}; history {:?}", r.status, String::from_utf8_lossy(&r.body), world.reg.history.borrow());
        if world.reg.holds(V1) != Some(sha(X)) {
            broken.push(etcd);
        }
    }
    assert!(broken.is_empty(), "v1 changed X -> Y without break-glass (etcd?): {broken:?}");
}

#[test]
fn atk_stale_commit_undoes_an_override() {
    let world = World::new(ETCD_BG);
    let (a, b) = (world.replica(), world.replica());
    // A: first push of X; the client has its 201; A's root context stalls before its tick.
    assert_eq!(world.push(&a, V1, X, &[BOB]).status, 201);
    run_for(&world, &[&b], 125_000); // A stalls (> 2 TTLs): X's hold record ends by its lease
    // Bob's push S of X through B: HEAD says X; last byte held.
    let mut s = world.open_put(&b, V1, X, &[BOB]);
    world.pump(&mut s, false);
    world.body(&mut s, &X[..X.len() - 1], false);
    world.pump(&mut s, false);
    world.advance(100);
    // Admin's logged override X -> Y through B.
    let o = world.push(&b, V1, Y, &[ADMIN, REASON]);
    assert_eq!(o.status, 201, "{}", String::from_utf8_lossy(&o.body));
    run_for(&world, &[&b], 500);
    // A resumes: its queued commit of X goes.
    run_for(&world, &[&a, &b], 1_000);
    eprintln!("record {:?}", world.etcd.value("/immutable-tags/app:v1"));
    world.body(&mut s, &X[X.len() - 1..], true);
    world.pump(&mut s, false);
    let r = reply(&s);
    eprintln!("S: {} {}; history {:?}", r.status, String::from_utf8_lossy(&r.body), world.reg.history.borrow());
    assert_eq!(world.reg.holds(V1), Some(sha(Y)), "the override was undone without break-glass");
}

/// A digest delete's granted tags are learned by HEAD; its `before` is read later (at the
/// grant). A tag overridden (X -> Y, committed) in between is not removed by the registry (it
/// no longer holds X); its forget must not erase Y, else a held push of X with a view from
/// before the override passes and undoes it (both stores erased it before the forget named its
/// digest). `deleted`: the registry's answer to the delete (404: no forget at all, the control).
fn override_during_a_digest_delete(etcd: bool, deleted: &str) {
    let world = World::new(if etcd { ETCD_BG } else { SHARED_BG });
    let (a, b) = (world.replica(), world.replica());
    let settle = |ms| if etcd { run_for(&world, &[&a, &b], ms) } else { world.advance(100) };
    assert_eq!(world.push(&a, V1, X, &[BOB]).status, 201);
    assert_eq!(world.push(&a, "v2", X, &[BOB]).status, 201);
    settle(500);
    // S: Bob's push of X to v1 (HEAD says X), last byte held.
    let mut s = world.open_put(&b, V1, X, &[BOB]);
    world.pump(&mut s, false);
    world.body(&mut s, &X[..X.len() - 1], false);
    world.pump(&mut s, false);
    // Admin's digest delete of X: tags/list, then HEADs of v1 and v2, answered one by one.
    let mut d = world.open(&a, "DELETE", &format!("/v2/app/manifests/{}", sha(X)), &[ADMIN, REASON]);
    let mut overridden = false;
    loop {
        let Some(token) = d.h.pending.borrow_mut().pop_front() else { break };
        let call = d.h.call_of(token);
        let path = call.header(":path").unwrap_or_default().to_string();
        let reply = if call.cluster == "etcd" { world.etcd.answer(&call) } else { world.reg.answer(&call) };
        deliver(&mut d, token, reply);
        if path.ends_with("/manifests/v1") && !overridden {
            overridden = true;
            // Admin's logged override of v1 X -> Y, committed (etcd: through A, whose order
            // then covers it; shared data: through B).
            let o = world.push(if etcd { &a } else { &b }, V1, Y, &[ADMIN, REASON]);
            assert_eq!(o.status, 201, "{}", String::from_utf8_lossy(&o.body));
            settle(500);
        }
    }
    assert!(overridden);
    assert!(d.h.reply().is_none(), "granted: {:?}", d.h.reply());
    if deleted == "202" {
        // The registry deletes manifest X: only v2 still holds it.
        let gone: Vec<String> = world.reg.tags.borrow().iter().filter(|(_, g)| **g == sha(X)).map(|(t, _)| t.clone()).collect();
        for t in gone {
            world.reg.tags.borrow_mut().remove(&t);
            world.reg.history.borrow_mut().push((t, String::new()));
        }
    }
    *d.h.response_headers.borrow_mut() = vec![(":status".into(), deleted.into())];
    *d.h.code_details.borrow_mut() = Some("via_upstream".into());
    d.f.on_response_headers(&d.h);
    d.f.on_done(&d.h);
    settle(1_000);
    world.body(&mut s, &X[X.len() - 1..], true);
    world.pump(&mut s, false);
    let r = reply(&s);
    assert_ne!(r.status, 201, "history {:?}", world.reg.history.borrow());
    assert_eq!(world.reg.holds(V1), Some(sha(Y)), "the override was undone without break-glass");
}

#[test]
fn a_digest_delete_does_not_forget_an_override_made_during_its_check() {
    override_during_a_digest_delete(false, "202");
    override_during_a_digest_delete(true, "202");
}

#[test]
fn an_override_during_a_digest_delete_the_registry_refused_stands() {
    override_during_a_digest_delete(false, "404");
}
