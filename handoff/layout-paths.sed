# issue 25 (layout-core): module paths moved; apply with `sed -i -f handoff/layout-paths.sed FILE.rs`.
# Every expression is idempotent (safe to re-apply to the whole tree). Each is anchored on `crate::` or `immutable_tags::` directly followed by the old
# top-level module name and a word boundary, so `crate::filter::claims` etc. are not touched.
s/\(crate\|immutable_tags\)::json_doc\b/\1::util::json_doc/g
s/\(crate\|immutable_tags\)::base64\b/\1::util::base64/g
s/\(crate\|immutable_tags\)::rules\b/\1::policy::rules/g
s/\(crate\|immutable_tags\)::exclusions\b/\1::policy::exclusions/g
s/\(crate\|immutable_tags\)::pattern\b/\1::policy::pattern/g
s/\(crate\|immutable_tags\)::glob\b/\1::policy::glob/g
s/\(crate\|immutable_tags\)::request\b/\1::oci::request/g
s/\(crate\|immutable_tags\)::digest\b/\1::oci::digest/g
s/\(crate\|immutable_tags\)::oci_error\b/\1::oci::error/g
# verdict.rs became verdict/push.rs: anchored on its items (or a `{` group), so that the
# expression is idempotent (re-applying it to a converted file leaves verdict::push alone).
s/\(crate\|immutable_tags\)::verdict::\({\|Current\b\|read_head\b\|read_get\b\|Verdict\b\|judge\b\)/\1::verdict::push::\2/g
s/\(crate\|immutable_tags\)::deletes\b/\1::verdict::delete/g
s/\(crate\|immutable_tags\)::pull\b/\1::verdict::pull/g
s/\(crate\|immutable_tags\)::break_glass\b/\1::verdict::break_glass/g
s/\(crate\|immutable_tags\)::cache\b/\1::store::tag_cache/g
s/\(crate\|immutable_tags\)::claims\b/\1::store::claims/g
s/\(crate\|immutable_tags\)::etcd\b/\1::store::etcd/g
s/\(crate\|immutable_tags\)::audit\b/\1::observability::audit/g
s/\(crate\|immutable_tags\)::metrics\b/\1::observability::metrics/g
s/\(crate\|immutable_tags\)::header_map\b/\1::proxy_wasm::header_map/g
s/\(crate\|immutable_tags\)::host\b/\1::proxy_wasm/g
s/\(crate\|immutable_tags\)::fuzz\b/\1::proptests/g
# filter/window.rs moved under filter/break_glass/ (break_glass <-> window circle cut).
s/\(crate\|immutable_tags\)::filter::window\b/\1::filter::break_glass::window/g
