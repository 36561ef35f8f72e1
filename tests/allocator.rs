//! The CLI keeps freed memory by setting mimalloc's `purge_delay` option through its enum index
//! (libmimalloc-sys does not name it): the index must be that option's. The mimalloc 3 that
//! libmimalloc-sys builds by default gives it the default 1000 (ms); its neighbours default to
//! other values (eager_commit_delay 1, use_numa_nodes 0).

#[test]
fn purge_delay_option_index_is_mimallocs() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
        return; // the environment overrides the default this test reads
    }
    // SAFETY: reads one of mimalloc's global options.
    let value = unsafe { libmimalloc_sys::mi_option_get(15) };
    assert_eq!(value, 1000, "option 15 is not mimalloc's purge_delay");
}
