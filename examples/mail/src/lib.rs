//! The mail example of converge: a signup must create the user *and* send one welcome mail,
//! through a mail provider that fails before, during and after doing the work.
//!
//! The cascade, and where each failure is absorbed:
//!
//! 1. [`signup`] writes the user and a [`events::SendMail`] event in one transaction (the
//!    outbox): both exist or neither does.
//! 2. The outbox relay publishes the event with the row's key as its idempotency key; a relay
//!    that crashes after publishing and before marking the row publishes it again and the broker
//!    drops the copy.
//! 3. The [`worker`] handles `SendMail` by calling the [`mail_service`] with that key (the
//!    provider answers a retry from its first answer) and emits [`events::MailSent`] under a key
//!    derived from it; every failure is an error, so the broker redelivers with backoff.
//! 4. The worker handles `MailSent` by recording the status, an idempotent insertion.
//!
//! [`demo`] runs it all against a real broker and PostgreSQL with failures injected and checks
//! that every user got exactly one mail and one status. Run it with
//! `cargo run -p converge-example-mail --bin mail-demo`.

pub mod broker;
pub mod db;
pub mod demo;
pub mod events;
pub mod mail_service;
pub mod signup;
pub mod worker;
