//! Claims in etcd (`claims.etcd`), the encoding half: the JSON bodies of etcd's v3 gateway
//! (`/v3/kv/txn`, `/v3/lease/grant`, `/v3/lease/keepalive`) and what their answers mean.
//! Pure: [`filter::claims::etcd`](crate::filter::claims::etcd) dispatches the calls.
//!
//! The gateway speaks proto3 JSON: keys and values are base64, int64 fields (revisions, lease
//! IDs, TTLs) are JSON strings, and fields at their default value are omitted (a txn whose
//! compare failed has no `succeeded`, a range with no match has no `kvs`, a lease that is gone
//! answers a keepalive without `TTL`). Errors come as `{"error","message","code"}`.
//!
//! A record is one key, `<prefix><repository>:<tag>`, whose value is a [`crate::store::claims::Rec`]
//! (`<at_ms> <stored digest|-> <committed revision> <claimed digest|-> <holders>`), judged by
//! the same rule as in shared data. Its lease is not its writer's: see [`filter::claims::etcd`](crate::filter::claims::etcd).
//! A commit cannot write its own revision into the value, so committed revision 0 means "this
//! key's `mod_revision`": [`parse_txn`] puts the number in, and every later rewrite (which
//! compares `mod_revision`, so knows it exactly) writes it out.
use crate::util::base64::{decode as unb64, encode as b64};
use crate::util::json_doc::Json;

/// An int64 of the gateway (a JSON string; a number from a lenient writer). Revisions and
/// lease IDs etcd hands out are never negative.
fn int64(v: Option<&Json>) -> Option<u64> {
    match v? {
        Json::Str(s) => s.parse().ok(),
        Json::Unsigned(n) => Some(*n),
        _ => None,
    }
}

fn text(v: Option<&Json>) -> Option<&str> {
    match v? {
        Json::Str(s) => Some(s),
        _ => None,
    }
}

/// Follows object fields from `v`.
fn at<'a>(v: &'a Json, path: &[&str]) -> Option<&'a Json> {
    path.iter().try_fold(v, |v, p| v.field(p))
}

/// The etcd key of `repository:tag` (both already valid OCI names: no separator ambiguity).
pub fn key(prefix: &str, repository: &str, tag: &str) -> String {
    format!("{prefix}{repository}:{tag}")
}

/// A record's value: `crate::store::claims::Rec` (one encoding for both stores).
pub use crate::store::claims::Rec as Record;

/// Create the claim if the key does not exist (`create_revision == 0`), else read it back.
/// (Every string in these bodies is base64 or digits: nothing to escape.)
pub fn claim_txn(key: &str, record: &Record, lease: u64) -> String {
    create_txn(key, record.encode().as_bytes(), lease)
}

/// Write `value` if the key does not exist, else read it back.
pub fn create_txn(key: &str, value: &[u8], lease: u64) -> String {
    let k = b64(key.as_bytes());
    let put = put(&k, value, lease);
    format!(
        r#"{{"compare":[{{"key":"{k}","target":"CREATE","create_revision":"0"}}],"success":[{put}],"failure":[{{"request_range":{{"key":"{k}"}}}}]}}"#
    )
}

fn put(k: &str, value: &[u8], lease: u64) -> String {
    format!(r#"{{"request_put":{{"key":"{k}","value":"{}","lease":"{lease}"}}}}"#, b64(value))
}

fn mod_is(k: &str, mod_revision: u64) -> String {
    format!(r#""compare":[{{"key":"{k}","target":"MOD","mod_revision":"{mod_revision}"}}]"#)
}

/// Write `record` only if the key is still at `mod_revision` (replacing an expired record, or
/// committing our own claim), else read it back.
pub fn put_if_txn(key: &str, mod_revision: u64, record: &Record, lease: u64) -> String {
    replace_txn(key, mod_revision, record.encode().as_bytes(), lease)
}

/// Write `value` only if the key is still at `mod_revision` (0: absent), else read it back.
pub fn replace_txn(key: &str, mod_revision: u64, value: &[u8], lease: u64) -> String {
    let k = b64(key.as_bytes());
    let (compare, put) = (mod_is(&k, mod_revision), put(&k, value, lease));
    format!(r#"{{{compare},"success":[{put}],"failure":[{{"request_range":{{"key":"{k}"}}}}]}}"#)
}

/// Read the key (the compare only holds, writing nothing, if the key does not exist).
pub fn read_txn(key: &str) -> String {
    let k = b64(key.as_bytes());
    format!(
        r#"{{"compare":[{{"key":"{k}","target":"CREATE","create_revision":"0"}}],"success":[],"failure":[{{"request_range":{{"key":"{k}"}}}}]}}"#
    )
}

/// Delete the key only if it is still at `mod_revision` (our own record, untouched since),
/// else read it back: a lost compare must be told from "the key is gone", or the release
/// (or delete grant) it carried would be dropped and leave a hold nobody owns.
pub fn delete_if_txn(key: &str, mod_revision: u64) -> String {
    let k = b64(key.as_bytes());
    let compare = mod_is(&k, mod_revision);
    format!(
        r#"{{{compare},"success":[{{"request_delete_range":{{"key":"{k}"}}}}],"failure":[{{"request_range":{{"key":"{k}"}}}}]}}"#
    )
}

/// The etcd key of `principal`'s break-glass window on `repository:tag`: repositories and tags
/// hold no `:`, so it never equals a claim key (one `:` after the prefix) nor another window's.
pub fn window_key(prefix: &str, repository: &str, tag: &str, principal: &str) -> String {
    format!("{prefix}window:{repository}:{tag}:{principal}")
}

/// What a used window's key holds until its lease ends: a late write of the window (create if
/// absent) finds the key taken, and a second use finds nothing to use.
pub const USED: &[u8] = b"used";

/// Use a window: if the key holds anything but [`USED`] (a missing key fails a value compare),
/// write `USED` on the same lease and answer what was there. One atomic read-and-use: of
/// several requests, or attempts, only one gets the value.
pub fn use_txn(key: &str) -> String {
    let (k, u) = (b64(key.as_bytes()), b64(USED));
    format!(
        r#"{{"compare":[{{"key":"{k}","target":"VALUE","result":"NOT_EQUAL","value":"{u}"}}],"success":[{{"request_put":{{"key":"{k}","value":"{u}","ignore_lease":true,"prev_kv":true}}}}]}}"#
    )
}

pub fn grant_body(ttl_seconds: u64) -> String {
    format!(r#"{{"TTL":"{ttl_seconds}"}}"#)
}

pub fn keepalive_body(lease: u64) -> String {
    format!(r#"{{"ID":"{lease}"}}"#)
}

/// The same txn, reading `key` up to `end` (exclusive) last in both branches: a claim reads
/// its digest's delete fence, a fence the claims in its repository, in the very txn that
/// writes them (no extra round trip, one revision for both). Both branches are never empty.
pub fn and_read(txn: &str, key: &str, end: &str) -> String {
    let op = format!(
        r#",{{"request_range":{{"key":"{}","range_end":"{}"}}}}"#,
        b64(key.as_bytes()),
        b64(end.as_bytes())
    );
    match (txn.find(r#"],"failure""#), txn.strip_suffix("]}")) {
        (Some(i), Some(t)) if i < t.len() => format!("{}{op}{}{op}]}}", &txn[..i], &t[i..]),
        _ => txn.to_string(),
    }
}

/// Whether a record `and_read` read, other than `own` (the key the txn wrote), holds a claim
/// of `digest` (`None`: unreadable). Values that are no record (windows) hold nothing.
pub fn read_holds(body: &[u8], own: &str, digest: &str) -> Option<bool> {
    let doc = Json::parse(body).ok()?;
    let r = doc.field("responses")?.item(1)?.field("response_range")?;
    let own = b64(own.as_bytes());
    let mut i = 0;
    while let Some(kv) = r.field("kvs").and_then(|k| k.item(i)) {
        let v = unb64(text(kv.field("value"))?).and_then(|v| String::from_utf8(v).ok());
        if text(kv.field("key"))? != own
            && v.and_then(|v| Record::decode(&v)).is_some_and(|r| crate::store::claims::holds(&r, digest))
        {
            return Some(true);
        }
        i += 1;
    }
    Some(false)
}

/// What an answer from etcd says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer<T> {
    Ok(T),
    /// The writer's lease is gone (expired or revoked): grant a new one and retry.
    LeaseGone,
    /// Anything else: unreachable, timed out, no quorum, an error body, garbage.
    Failed(String),
}

/// The common part: a 200 with a JSON object that is not an error body.
fn json_answer(status: Option<u16>, body: &[u8]) -> Result<Json, Answer<()>> {
    let doc = Json::parse(body).ok();
    let message = doc.as_ref().and_then(|d| text(d.field("message")));
    if let Some(m) = message {
        if m.contains("lease not found") {
            return Err(Answer::LeaseGone);
        }
        return Err(Answer::Failed(format!("etcd answered {}: {m}", status.unwrap_or(0))));
    }
    match (status, doc) {
        (Some(200), Some(d @ Json::Object(_))) => Ok(d),
        (Some(200), _) => Err(Answer::Failed("etcd answered something unreadable".into())),
        (Some(s), _) => Err(Answer::Failed(format!("etcd answered {s}"))),
        (None, _) => Err(Answer::Failed("etcd reset the call".into())),
    }
}

fn lift<T, U>(a: Answer<U>) -> Answer<T> {
    match a {
        Answer::LeaseGone => Answer::LeaseGone,
        Answer::Failed(m) => Answer::Failed(m),
        Answer::Ok(_) => Answer::Failed(String::new()),
    }
}

/// The outcome of a txn from [`claim_txn`], [`put_if_txn`] or [`delete_if_txn`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Txn {
    /// The compare held and the write is done: the key is now at `revision`.
    Done { revision: u64 },
    /// The compare failed: the key as read back (`None`: it does not exist).
    Found(Option<(Record, u64)>),
}

pub fn parse_txn(status: Option<u16>, body: &[u8]) -> Answer<Txn> {
    let doc = match json_answer(status, body) {
        Ok(d) => d,
        Err(a) => return lift(a),
    };
    let revision = int64(at(&doc, &["header", "revision"]));
    if matches!(doc.field("succeeded"), Some(Json::Bool(true))) {
        return match revision {
            Some(revision) => Answer::Ok(Txn::Done { revision }),
            None => Answer::Failed("etcd answered a txn without a revision".into()),
        };
    }
    if revision.is_none() {
        return Answer::Failed("etcd answered something unreadable".into());
    }
    let range =
        doc.field("responses").and_then(|r| r.item(0)).and_then(|r| at(r, &["response_range", "kvs"]));
    let Some(kv) = range.and_then(|kvs| kvs.item(0)) else { return Answer::Ok(Txn::Found(None)) };
    let value = text(kv.field("value")).unwrap_or_default();
    let record = unb64(value).and_then(|v| String::from_utf8(v).ok()).and_then(|v| Record::decode(&v));
    match (record, int64(kv.field("mod_revision"))) {
        (Some(mut r), Some(m)) => {
            if let Some((_, rev @ 0)) = &mut r.stored {
                *rev = m;
            }
            Answer::Ok(Txn::Found(Some((r, m))))
        }
        _ => Answer::Failed("etcd holds a claim record this filter cannot read".into()),
    }
}

/// The cluster revision an answer (any: txn, grant, keepalive, even a failed compare) was
/// given at: a lower bound of etcd's revision from then on.
pub fn header_revision(body: &[u8]) -> Option<u64> {
    let doc = Json::parse(body).ok()?;
    int64(at(&doc, &["header", "revision"]).or_else(|| at(&doc, &["result", "header", "revision"])))
}

/// A txn of a window's key answered: `Ok(Ok(revision))` done (the key is now at `revision`),
/// `Ok(Err(m))` the compare failed, the key is at `m` (0: absent).
fn window_txn(status: Option<u16>, body: &[u8]) -> Answer<(Json, Result<u64, u64>)> {
    let doc = match json_answer(status, body) {
        Ok(d) => d,
        Err(a) => return lift(a),
    };
    let Some(revision) = int64(at(&doc, &["header", "revision"])) else {
        return Answer::Failed("etcd answered something unreadable".into());
    };
    if matches!(doc.field("succeeded"), Some(Json::Bool(true))) {
        return Answer::Ok((doc, Ok(revision)));
    }
    let range =
        doc.field("responses").and_then(|r| r.item(0)).and_then(|r| at(r, &["response_range", "kvs"]));
    let m = range
        .and_then(|kvs| kvs.item(0))
        .map_or(Some(0), |kv| int64(kv.field("mod_revision")))
        .unwrap_or(u64::MAX);
    Answer::Ok((doc, Err(m)))
}

/// A window's create or replace answered (see `window_txn`).
pub fn parse_written(status: Option<u16>, body: &[u8]) -> Answer<Result<u64, u64>> {
    match window_txn(status, body) {
        Answer::Ok((_, r)) => Answer::Ok(r),
        a => lift(a),
    }
}

/// A [`use_txn`] answered: the window's value, its lease and the revision of the `USED` that
/// replaced it; `None`: there was nothing to use.
pub fn parse_taken(status: Option<u16>, body: &[u8]) -> Answer<Option<(Vec<u8>, u64, u64)>> {
    let (doc, revision) = match window_txn(status, body) {
        Answer::Ok((doc, Ok(revision))) => (doc, revision),
        Answer::Ok(_) => return Answer::Ok(None),
        a => return lift(a),
    };
    let kv = doc.field("responses").and_then(|r| r.item(0)).and_then(|r| at(r, &["response_put", "prev_kv"]));
    match kv.and_then(|kv| Some((unb64(text(kv.field("value"))?)?, int64(kv.field("lease")).unwrap_or(0)))) {
        Some((v, lease)) => Answer::Ok(Some((v, lease, revision))),
        None => Answer::Failed("etcd answered something unreadable".into()),
    }
}

/// A granted lease's ID.
pub fn parse_grant(status: Option<u16>, body: &[u8]) -> Answer<u64> {
    match json_answer(status, body) {
        Ok(d) => match int64(d.field("ID")) {
            Some(id) if id != 0 => Answer::Ok(id),
            _ => Answer::Failed("etcd granted no lease".into()),
        },
        Err(a) => lift(a),
    }
}

/// A keepalive: the lease lives on (`TTL` > 0), or it is gone.
pub fn parse_keepalive(status: Option<u16>, body: &[u8]) -> Answer<()> {
    match json_answer(status, body) {
        Ok(d) => match int64(at(&d, &["result", "TTL"])) {
            Some(ttl) if ttl > 0 => Answer::Ok(()),
            _ if d.field("result").is_some() => Answer::LeaseGone,
            _ => Answer::Failed("etcd answered something unreadable".into()),
        },
        Err(a) => a,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};
    #[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn a_txn_reads_a_range_last_in_both_branches_and_the_read_is_judged() {
        let r = Record { stored: None, claim: Some(("sha256:d".into(), vec![5])), at_ms: 5 };
        for txn in [claim_txn("/p/app:v1", &r, 7), put_if_txn("/p/app:v1", 3, &r, 7)] {
            let v: Value = serde_json::from_str(&and_read(&txn, "/p/app:", "/p/app;")).unwrap();
            for branch in ["success", "failure"] {
                let ops = v[branch].as_array().unwrap();
                assert_eq!(ops.len(), 2, "{branch}");
                assert_eq!(ops[1]["request_range"]["range_end"], json!(b64(b"/p/app;")));
            }
        }
        let kv = |k: &str, v: &str| json!({"key": b64(k.as_bytes()), "value": b64(v.as_bytes())});
        let body = |kvs: Value| {
            json!({"responses": [{}, {"response_range": {"kvs": kvs}}]}).to_string().into_bytes()
        };
        let held = body(json!([kv("/p/app:v1", &r.encode()), kv("/p/app:v2", "5 - 0 sha256:e 1")]));
        assert_eq!(read_holds(&held, "/p/app:v9", "sha256:d"), Some(true));
        assert_eq!(read_holds(&held, "/p/app:v1", "sha256:d"), Some(false), "its own write is not another's");
        assert_eq!(read_holds(&held, "/p/app:v9", "sha256:f"), Some(false));
        assert_eq!(
            read_holds(&body(json!([kv("/p/window:app:v1:admin", "x")])), "/p/app:v9", "sha256:d"),
            Some(false)
        );
        assert_eq!(read_holds(b"{}", "/p/app:v9", "sha256:d"), None, "unreadable");
    }

    #[test]
    fn requests_carry_base64_and_int64_strings() {
        let r = Record { stored: None, claim: Some(("sha256:ab".into(), vec![5])), at_ms: 5 };
        let t: Value = serde_json::from_str(&claim_txn("/p/a:v1", &r, 7)).unwrap();
        assert_eq!(
            t["compare"][0],
            json!({"key": b64(b"/p/a:v1"), "target": "CREATE", "create_revision": "0"})
        );
        assert_eq!(t["success"][0]["request_put"]["lease"], "7");
        assert_eq!(
            unb64(t["success"][0]["request_put"]["value"].as_str().unwrap()).unwrap(),
            b"5 - 0 sha256:ab@5 1"
        );
        assert_eq!(t["failure"][0]["request_range"]["key"], b64(b"/p/a:v1"));
        let t: Value = serde_json::from_str(&put_if_txn(
            "k",
            42,
            &Record { stored: Some(("sha256:ab".into(), 5)), claim: None, ..r },
            7,
        ))
        .unwrap();
        assert_eq!(t["compare"][0], json!({"key": "aw==", "target": "MOD", "mod_revision": "42"}));
        assert_eq!(
            unb64(t["success"][0]["request_put"]["value"].as_str().unwrap()).unwrap(),
            b"5 sha256:ab 5 - 0"
        );
        let t: Value = serde_json::from_str(&delete_if_txn("k", 9_007_199_254_740_993)).unwrap();
        assert_eq!(
            t["compare"][0]["mod_revision"], "9007199254740993",
            "int64 beyond f64 precision stays exact"
        );
        assert_eq!(grant_body(60), r#"{"TTL":"60"}"#);
        assert_eq!(keepalive_body(7_587_888_229_823_741_952), r#"{"ID":"7587888229823741952"}"#);
    }

    #[test]
    fn records_round_trip_and_refuse_junk() {
        let r = Record { stored: Some(("sha256:ab".into(), 120)), claim: None, at_ms: 123 };
        assert_eq!(Record::decode(&r.encode()), Some(r));
        for junk in ["", "x 1 d", "c one d", "c 1", "c 1 ", "c 1 d extra"] {
            assert_eq!(Record::decode(junk), None, "{junk:?}");
        }
    }

    fn txn(body: &str) -> Answer<Txn> {
        parse_txn(Some(200), body.as_bytes())
    }

    #[test]
    fn txn_answers() {
        let ok = r#"{"header":{"revision":"12"},"succeeded":true,"responses":[{"response_put":{"header":{"revision":"12"}}}]}"#;
        assert_eq!(txn(ok), Answer::Ok(Txn::Done { revision: 12 }));
        // A failed compare omits `succeeded`; the range read back holds the record.
        let value = b64(b"c 77 sha256:other");
        let found = format!(
            r#"{{"header":{{"revision":"13"}},"responses":[{{"response_range":{{"header":{{"revision":"13"}},"kvs":[{{"key":"YQ==","create_revision":"2","mod_revision":"11","version":"1","value":"{value}","lease":"5"}}],"count":"1"}}}}]}}"#
        );
        let rec = Record { stored: None, claim: Some(("sha256:other".into(), vec![77])), at_ms: 77 };
        assert_eq!(txn(&found), Answer::Ok(Txn::Found(Some((rec, 11)))));
        // The key vanished between compare and range: no `kvs`.
        assert_eq!(
            txn(
                r#"{"header":{"revision":"13"},"responses":[{"response_range":{"header":{"revision":"13"}}}]}"#
            ),
            Answer::Ok(Txn::Found(None))
        );
        // A delete-if whose compare failed has no responses at all.
        assert_eq!(txn(r#"{"header":{"revision":"13"}}"#), Answer::Ok(Txn::Found(None)));
        let unreadable = found.replace(&value, &b64(b"something else"));
        assert!(matches!(txn(&unreadable), Answer::Failed(m) if m.contains("cannot read")));
    }

    #[test]
    fn error_bodies_timeouts_and_garbage_fail() {
        let lease = r#"{"error":"etcdserver: requested lease not found","message":"etcdserver: requested lease not found","code":5}"#;
        assert_eq!(txn(lease), Answer::LeaseGone);
        assert_eq!(parse_txn(Some(400), lease.as_bytes()), Answer::LeaseGone);
        let quorum = r#"{"error":"etcdserver: request timed out","message":"etcdserver: request timed out","code":14}"#;
        assert_eq!(
            parse_txn(Some(503), quorum.as_bytes()),
            Answer::Failed("etcd answered 503: etcdserver: request timed out".into())
        );
        assert_eq!(
            parse_txn(Some(504), b"upstream request timeout"),
            Answer::Failed("etcd answered 504".into())
        );
        assert_eq!(parse_txn(None, b""), Answer::Failed("etcd reset the call".into()));
        assert!(matches!(txn("<html>"), Answer::Failed(m) if m.contains("unreadable")));
        assert!(matches!(txn("[]"), Answer::Failed(m) if m.contains("unreadable")));
        assert!(matches!(txn("{}"), Answer::Failed(m) if m.contains("unreadable")));
        assert!(matches!(txn(r#"{"header":{},"succeeded":true}"#), Answer::Failed(_)));
    }

    #[test]
    fn lease_answers() {
        let grant = br#"{"header":{"revision":"1"},"ID":"4111120382571439109","TTL":"5"}"#;
        assert_eq!(parse_grant(Some(200), grant), Answer::Ok(4_111_120_382_571_439_109));
        assert!(matches!(parse_grant(Some(200), br#"{"header":{}}"#), Answer::Failed(_)));
        // Lease 0 means "no lease" to etcd: a put with it would never expire.
        assert!(matches!(
            parse_grant(Some(200), br#"{"header":{"revision":"1"},"ID":"0","TTL":"5"}"#),
            Answer::Failed(_)
        ));
        // A lenient writer's plain number reads the same as the gateway's string.
        assert_eq!(parse_grant(Some(200), br#"{"header":{"revision":1},"ID":42,"TTL":5}"#), Answer::Ok(42));
        let alive = br#"{"result":{"header":{"revision":"2"},"ID":"9","TTL":"5"}}"#;
        assert_eq!(parse_keepalive(Some(200), alive), Answer::Ok(()));
        // A lease that is gone answers without `TTL`.
        assert_eq!(
            parse_keepalive(Some(200), br#"{"result":{"header":{"revision":"2"},"ID":"999"}}"#),
            Answer::LeaseGone
        );
        // A TTL of 0 or less is a lease that has run out.
        for ttl in ["0", "-1"] {
            let gone = format!(r#"{{"result":{{"header":{{"revision":"2"}},"ID":"9","TTL":"{ttl}"}}}}"#);
            assert_eq!(parse_keepalive(Some(200), gone.as_bytes()), Answer::LeaseGone, "TTL {ttl}");
        }
        // A stream that carries an error, not a result, says nothing about the lease.
        let error = br#"{"error":{"grpc_code":14,"http_code":503,"message":"etcdserver: no leader"}}"#;
        assert!(matches!(parse_keepalive(Some(200), error), Answer::Failed(_)));
        assert!(matches!(parse_keepalive(Some(504), b"timeout"), Answer::Failed(_)));
    }

    #[test]
    fn windows_are_created_used_and_put_back_by_compare() {
        let wk = window_key("/p/", "app", "v1", "admin");
        assert_eq!(wk, "/p/window:app:v1:admin");
        let t: Value = serde_json::from_str(&use_txn("k")).unwrap();
        assert_eq!(
            t["compare"][0],
            json!({"key": "aw==", "target": "VALUE", "result": "NOT_EQUAL", "value": b64(USED)})
        );
        assert_eq!(
            t["success"][0]["request_put"],
            json!({"key": "aw==", "value": b64(USED), "ignore_lease": true, "prev_kv": true})
        );
        // etcd 3.4's answers: used (the window and its lease; USED at the txn's revision), or not.
        let taken = format!(
            r#"{{"header":{{"revision":"9"}},"succeeded":true,"responses":[{{"response_put":{{"header":{{"revision":"9"}},"prev_kv":{{"key":"aw==","mod_revision":"4","value":"{}","lease":"42"}}}}}}]}}"#,
            b64(b"w")
        );
        assert_eq!(parse_taken(Some(200), taken.as_bytes()), Answer::Ok(Some((b"w".to_vec(), 42, 9))));
        assert_eq!(
            parse_taken(Some(200), br#"{"header":{"revision":"4"}}"#),
            Answer::Ok(None),
            "nothing to use"
        );
        assert!(matches!(
            parse_taken(Some(200), br#"{"header":{"revision":"4"},"succeeded":true}"#),
            Answer::Failed(_)
        ));
        assert!(matches!(parse_taken(Some(503), b"no healthy upstream"), Answer::Failed(_)));
        let t: Value = serde_json::from_str(&replace_txn("k", 9, b"w", 42)).unwrap();
        assert_eq!(t["compare"][0], json!({"key": "aw==", "target": "MOD", "mod_revision": "9"}));
        assert_eq!(t["success"][0]["request_put"], json!({"key": "aw==", "value": b64(b"w"), "lease": "42"}));
        assert_eq!(
            parse_written(Some(200), br#"{"header":{"revision":"5"},"succeeded":true}"#),
            Answer::Ok(Ok(5))
        );
        let found = format!(
            r#"{{"header":{{"revision":"5"}},"responses":[{{"response_range":{{"kvs":[{{"key":"aw==","mod_revision":"3","value":"{}"}}]}}}}]}}"#,
            b64(USED)
        );
        assert_eq!(
            parse_written(Some(200), found.as_bytes()),
            Answer::Ok(Err(3)),
            "a used window, to replace at 3"
        );
        assert_eq!(
            parse_written(Some(200), br#"{"header":{"revision":"5"},"responses":[{"response_range":{}}]}"#),
            Answer::Ok(Err(0)),
            "absent"
        );
        let t: Value = serde_json::from_str(&create_txn("k", b"v", 5)).unwrap();
        assert_eq!(t["compare"][0]["target"], "CREATE");
        assert_eq!(t["success"][0]["request_put"]["lease"], "5");
    }
}
