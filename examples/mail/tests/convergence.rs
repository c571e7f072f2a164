//! The mail example end to end: a real broker (converge, in process, on disk, restarted
//! mid-run), the real PostgreSQL, a mail provider failing half of its calls, a worker and a
//! relay crashed mid-run. In the end every user has exactly one mail and one recorded status.

use converge_example_mail::demo::{self, DemoConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_user_gets_exactly_one_mail_and_one_status() {
    let report = demo::run(DemoConfig {
        users: 60,
        ..DemoConfig::default()
    })
    .await
    .expect("the demo runs");
    println!("{report}");
    assert_eq!(report.users, 60);
    assert!(report.converged(), "not converged:\n{report}");
    // The failures really happened, so the outcome is not luck: calls failed after sending,
    // and their retries were answered by the provider from the key instead of sending again.
    assert!(
        report.provider.failed_after + report.provider.slow > 0,
        "{report}"
    );
    assert!(report.provider.replayed > 0, "{report}");
    assert!(report.worker.provider_failures > 0, "{report}");
}

/// The control run: the same system without the idempotency key on the provider call. Retries
/// of calls that had in fact succeeded send second mails, so the check above is not vacuous.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_the_idempotency_key_retries_send_duplicate_mails() {
    let report = demo::run(DemoConfig {
        users: 60,
        chaos: false,
        send_idempotency_key: false,
        ..DemoConfig::default()
    })
    .await
    .expect("the demo runs");
    println!("{report}");
    assert!(report.users_with_duplicate_mail > 0, "{report}");
    assert!(!report.converged(), "{report}");
}
