//! The command line, as clap definitions. Values are parsed and validated here (see
//! [`crate::parse`]), so the commands receive typed arguments and a bad value is a usage error.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use converge_core::retry::Preset;
use converge_core::{ProjectId, SubscriptionName, TopicName};

use crate::commands::{BenchCommand, RelayArgs};
use crate::parse::{self, Endpoint, Limit, NameArg};

/// converge: a broker with the API of Google Cloud Pub/Sub.
///
/// Run the broker with `converge serve`; the other commands talk to a running broker over gRPC.
#[derive(Debug, Parser)]
#[command(
    name = "converge",
    version,
    propagate_version = true,
    max_term_width = 100,
    after_help = EXAMPLES
)]
pub struct Cli {
    /// Options shared by every command.
    #[command(flatten)]
    pub global: Global,
    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The help heading of the options every command accepts, so that they stand apart from the
/// command's own.
const GLOBAL: &str = "Global options";

/// Examples shown under `converge --help`.
const EXAMPLES: &str = "\
Examples:
  converge serve --memory
  converge serve --store postgres://converge@db/converge
  converge topics create orders
  converge subscriptions create work --topic orders --ack-deadline 30s
  converge publish orders 'hello' --attribute kind=greeting
  seq 1 100 | converge publish orders
  converge pull work --max 10 --ack
  converge --json topics list
  converge bench publish --spawn fsync --publishers 16
  converge relay --database-url postgres://app@db/app";

/// Options shared by every command.
#[derive(Debug, Args)]
pub struct Global {
    /// Broker address, host:port or http://host:port [default: $CONVERGE_ENDPOINT, else
    /// $PUBSUB_EMULATOR_HOST, else 127.0.0.1:8085]
    #[arg(long, global = true, help_heading = GLOBAL, value_parser = parse::endpoint, value_name = "ADDR")]
    pub endpoint: Option<Endpoint>,
    /// Project of short resource names (`orders` means projects/PROJECT/topics/orders)
    #[arg(long, global = true, help_heading = GLOBAL, env = "CONVERGE_PROJECT", default_value = "converge", value_parser = parse::project)]
    pub project: ProjectId,
    /// Print one JSON document instead of tables
    #[arg(long, global = true, help_heading = GLOBAL)]
    pub json: bool,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the broker (gRPC and REST on one port)
    Serve(ServeArgs),
    /// Create, list, show and delete topics
    #[command(subcommand, visible_alias = "topic")]
    Topics(TopicsCommand),
    /// Create, list, show, update, delete and detach subscriptions
    #[command(subcommand, visible_alias = "subscription", alias = "subs")]
    Subscriptions(SubscriptionsCommand),
    /// Publish messages to a topic and print their ids
    Publish(PublishArgs),
    /// Pull messages from a subscription and print them
    Pull(PullArgs),
    /// Measure a broker: publish throughput and latency
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Publish the rows of a transactional outbox table (PostgreSQL or SQLite) to the broker
    Relay(RelayArgs),
}

/// How the broker makes a publish durable before answering it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DurabilityArg {
    /// After fdatasync: survives power loss
    Fsync,
    /// After write() to the OS: survives a crash of the broker, not of the machine
    OsBuffer,
}

/// How the broker writes its logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable on a terminal, JSON lines otherwise
    Auto,
    /// One JSON object per line
    Json,
    /// Human-readable lines
    Human,
}

/// `converge serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on (gRPC and REST)
    #[arg(
        long,
        env = "CONVERGE_LISTEN",
        default_value = "127.0.0.1:8085",
        value_name = "ADDR"
    )]
    pub listen: std::net::SocketAddr,
    /// Directory of the embedded store
    #[arg(
        long,
        env = "CONVERGE_DATA_DIR",
        default_value = "./converge-data",
        value_name = "DIR"
    )]
    pub data_dir: PathBuf,
    /// Keep everything in memory; nothing survives a restart
    #[arg(long, conflicts_with = "data_dir")]
    pub memory: bool,
    /// When a publish counts as durable (embedded store)
    #[arg(long, value_enum, default_value_t = DurabilityArg::Fsync)]
    pub durability: DurabilityArg,
    /// Keep everything in PostgreSQL instead of the embedded store, so that several brokers can
    /// share it: postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE[?schema=NAME] (schema
    /// `converge` by default)
    #[arg(
        long,
        env = "CONVERGE_STORE_URL",
        value_parser = store_url,
        value_name = "URL",
        hide_env_values = true,
        conflicts_with_all = ["data_dir", "memory", "durability"]
    )]
    pub store: Option<String>,
    /// Connections to PostgreSQL [default: max(4, 2 × cores)]
    #[arg(
        long,
        requires = "store",
        value_parser = clap::value_parser!(u32).range(1..=1000),
        value_name = "N"
    )]
    pub store_pool: Option<u32>,
    /// How long in-flight requests may finish after SIGTERM or SIGINT
    #[arg(long, default_value = "10s", value_parser = parse::duration, value_name = "DURATION")]
    pub shutdown_grace: Duration,
    /// Log format
    #[arg(long, value_enum, default_value_t = LogFormat::Auto)]
    pub log_format: LogFormat,
    /// Log filter, e.g. `info` or `info,converge_server=debug`
    #[arg(long, env = "RUST_LOG", default_value = "info", value_name = "FILTER")]
    pub log_level: String,
    /// Let tests move the broker's clock (never in production)
    #[arg(long, hide = true)]
    pub test_clock: bool,
}

/// A `--store` URL: PostgreSQL is the only engine reached by URL, so anything but
/// `postgres://` or `postgresql://` is a usage error (rather than a connection error later).
fn store_url(s: &str) -> Result<String, String> {
    if s.starts_with("postgres://") || s.starts_with("postgresql://") {
        Ok(s.to_owned())
    } else {
        Err("the store must be a PostgreSQL URL, \
             postgres://USER@HOST[:PORT]/DATABASE[?schema=NAME] (or postgresql://...)"
            .to_owned())
    }
}

/// `converge topics ...`.
#[derive(Debug, Subcommand)]
pub enum TopicsCommand {
    /// Create a topic
    Create(TopicCreateArgs),
    /// List the topics of the project
    #[command(visible_alias = "ls")]
    List,
    /// Show a topic
    #[command(visible_alias = "describe")]
    Get(TopicNameArg),
    /// Delete a topic (its subscriptions remain, reading from `_deleted-topic_`)
    #[command(visible_alias = "rm")]
    Delete(TopicNameArg),
}

/// A topic named on the command line.
#[derive(Debug, Args)]
pub struct TopicNameArg {
    /// Topic name, short (orders) or full (projects/p/topics/orders)
    #[arg(value_parser = parse::topic_name)]
    pub name: NameArg<TopicName>,
}

/// `converge topics create`.
#[derive(Debug, Args)]
pub struct TopicCreateArgs {
    /// Topic name, short (orders) or full (projects/p/topics/orders)
    #[arg(value_parser = parse::topic_name)]
    pub name: NameArg<TopicName>,
    /// Label, key=value (repeatable)
    #[arg(long = "label", value_parser = parse::key_value, value_name = "KEY=VALUE")]
    pub labels: Vec<(String, String)>,
    /// Keep messages this long after publish, even once acknowledged (10m to 31d)
    #[arg(long, value_parser = parse::duration, value_name = "DURATION")]
    pub retention: Option<Duration>,
    /// How long an idempotency key is remembered [default on the broker: 24h]
    #[arg(long, value_parser = parse::duration, value_name = "DURATION")]
    pub dedup_window: Option<Duration>,
}

/// `converge subscriptions ...`.
#[derive(Debug, Subcommand)]
pub enum SubscriptionsCommand {
    /// Create a subscription to a topic
    Create(Box<SubscriptionCreateArgs>),
    /// List the subscriptions of the project
    #[command(visible_alias = "ls")]
    List,
    /// Show a subscription
    #[command(visible_alias = "describe")]
    Get(SubscriptionNameArg),
    /// Change a subscription: only the settings given are sent (as the update mask)
    Update(Box<SubscriptionUpdateArgs>),
    /// Delete a subscription
    #[command(visible_alias = "rm")]
    Delete(SubscriptionNameArg),
    /// Detach a subscription from its topic: it keeps its settings but receives nothing more
    Detach(SubscriptionNameArg),
}

/// A subscription named on the command line.
#[derive(Debug, Args)]
pub struct SubscriptionNameArg {
    /// Subscription name, short (work) or full (projects/p/subscriptions/work)
    #[arg(value_parser = parse::subscription_name)]
    pub name: NameArg<SubscriptionName>,
}

/// `converge subscriptions create`.
#[derive(Debug, Args)]
pub struct SubscriptionCreateArgs {
    /// Subscription name, short (work) or full (projects/p/subscriptions/work)
    #[arg(value_parser = parse::subscription_name)]
    pub name: NameArg<SubscriptionName>,
    /// Topic to read, short or full name
    #[arg(long, value_parser = parse::topic_name)]
    pub topic: NameArg<TopicName>,
    /// Settings of the subscription.
    #[command(flatten)]
    pub settings: SubscriptionSettings,
}

/// `converge subscriptions update`.
#[derive(Debug, Args)]
pub struct SubscriptionUpdateArgs {
    /// Subscription name, short (work) or full (projects/p/subscriptions/work)
    #[arg(value_parser = parse::subscription_name)]
    pub name: NameArg<SubscriptionName>,
    /// Settings to change.
    #[command(flatten)]
    pub settings: SubscriptionSettings,
    /// Remove a label (repeatable)
    #[arg(long = "remove-label", value_name = "KEY")]
    pub remove_labels: Vec<String>,
    /// Remove the dead-letter policy
    #[arg(long, conflicts_with_all = ["dead_letter_topic", "max_delivery_attempts"])]
    pub clear_dead_letter_policy: bool,
    /// Remove the retry policy (redeliver at once after a nack or an expired lease)
    #[arg(long, conflicts_with_all = ["min_backoff", "max_backoff"])]
    pub clear_retry_policy: bool,
}

/// Which family of retry schedules a subscription follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RetryPreset {
    /// Exponential backoff between the minimum and maximum backoff, as Pub/Sub does
    Pubsub,
    /// Immediate retries, then backoff, as SNS delivery policies do
    Sns,
}

impl From<RetryPreset> for Preset {
    fn from(preset: RetryPreset) -> Self {
        match preset {
            RetryPreset::Pubsub => Preset::PubSub,
            RetryPreset::Sns => Preset::Sns,
        }
    }
}

/// Settings of a subscription, shared by `create` and `update`. Every field is optional so that
/// `update` can tell which ones were given.
#[derive(Debug, Args)]
pub struct SubscriptionSettings {
    /// Lease of a delivery before it is delivered again (10s to 600s)
    #[arg(long, value_parser = parse::whole_seconds, value_name = "DURATION")]
    pub ack_deadline: Option<Duration>,
    /// Deliver only messages whose attributes match, e.g. 'attributes.kind = "order"'
    #[arg(long, value_name = "EXPR")]
    pub filter: Option<String>,
    /// Topic that receives messages after too many delivery attempts
    #[arg(long, value_parser = parse::topic_name, value_name = "TOPIC")]
    pub dead_letter_topic: Option<NameArg<TopicName>>,
    /// Delivery attempts before dead-lettering (5 to 100) [default: 5]
    #[arg(long, value_name = "N")]
    pub max_delivery_attempts: Option<i32>,
    /// Smallest delay before a redelivery (Pub/Sub retry policy) [default: 10s]
    #[arg(long, value_parser = parse::duration, value_name = "DURATION")]
    pub min_backoff: Option<Duration>,
    /// Largest delay before a redelivery (Pub/Sub retry policy) [default: 600s]
    #[arg(long, value_parser = parse::duration, value_name = "DURATION")]
    pub max_backoff: Option<Duration>,
    /// Family of retry schedules
    #[arg(long, value_enum, value_name = "PRESET")]
    pub retry_preset: Option<RetryPreset>,
    /// Retries made at once, before any backoff
    #[arg(long, value_name = "N")]
    pub retry_immediate: Option<u32>,
    /// Give up retrying (dead-letter) this long after the first delivery, or `none`
    #[arg(long, value_parser = parse::limit, value_name = "DURATION|none")]
    pub retry_max_duration: Option<Limit>,
    /// Deliver messages of one ordering key in order, one at a time (--ordering=false to unset)
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "BOOL")]
    pub ordering: Option<bool>,
    /// Keep unacknowledged messages this long (10m to 31d) [default: 7d]
    #[arg(long, value_parser = parse::duration, value_name = "DURATION")]
    pub retention: Option<Duration>,
    /// Keep acknowledged messages too, for seek (--retain-acked=false to unset)
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "BOOL")]
    pub retain_acked: Option<bool>,
    /// Delete the subscription after this long without activity, or `never` [default: 31d]
    #[arg(long, value_parser = parse::limit, value_name = "DURATION|never")]
    pub expiration_ttl: Option<Limit>,
    /// Label, key=value (repeatable)
    #[arg(long = "label", value_parser = parse::key_value, value_name = "KEY=VALUE")]
    pub labels: Vec<(String, String)>,
    /// Deliver by push: the broker POSTs each message to this URL ('' turns push off)
    #[arg(long, value_name = "URL")]
    pub push_endpoint: Option<String>,
    /// Push the raw message data instead of the JSON envelope
    #[arg(long)]
    pub push_no_wrapper: bool,
    /// With --push-no-wrapper: send attributes and message metadata as HTTP headers
    #[arg(long, requires = "push_no_wrapper")]
    pub push_write_metadata: bool,
    /// Push config attribute, key=value (repeatable), e.g. x-goog-version=v1
    #[arg(long = "push-attribute", value_parser = parse::key_value, value_name = "KEY=VALUE")]
    pub push_attributes: Vec<(String, String)>,
}

/// `converge publish`.
#[derive(Debug, Args)]
pub struct PublishArgs {
    /// Topic name, short or full
    #[arg(value_parser = parse::topic_name)]
    pub topic: NameArg<TopicName>,
    /// The message. `-`, or nothing with a pipe on stdin: each line of stdin is one message
    /// (empty lines are skipped)
    pub data: Option<String>,
    /// Attribute of every message, key=value (repeatable)
    #[arg(long = "attribute", short = 'a', value_parser = parse::key_value, value_name = "KEY=VALUE")]
    pub attributes: Vec<(String, String)>,
    /// Ordering key of every message
    #[arg(long, value_name = "KEY")]
    pub ordering_key: Option<String>,
    /// Publish at most once per key within the topic's dedup window; reading stdin, line N gets
    /// the key KEY-N, so that re-running the same input publishes nothing twice
    #[arg(long, value_name = "KEY")]
    pub idempotency_key: Option<String>,
}

/// `converge pull`.
#[derive(Debug, Args)]
pub struct PullArgs {
    /// Subscription name, short or full
    #[arg(value_parser = parse::subscription_name)]
    pub subscription: NameArg<SubscriptionName>,
    /// Most messages to pull
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(i32).range(1..=1000), value_name = "N")]
    pub max: i32,
    /// Acknowledge the messages pulled
    #[arg(long)]
    pub ack: bool,
    /// Wait for messages when none are available (long poll)
    #[arg(long)]
    pub wait: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("converge").chain(args.iter().copied()))
    }

    #[test]
    fn definitions_are_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_options_work_after_the_subcommand() {
        let cli = parse(&[
            "topics",
            "list",
            "--project",
            "p9",
            "--json",
            "--endpoint",
            "h:1",
        ])
        .unwrap();
        assert_eq!(cli.global.project.as_str(), "p9");
        assert!(cli.global.json);
        assert_eq!(cli.global.endpoint.unwrap().uri(), "http://h:1");
    }

    #[test]
    fn memory_conflicts_with_an_explicit_data_dir() {
        let err = parse(&["serve", "--memory", "--data-dir", "/tmp/x"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::ArgumentConflict);
        let Command::Serve(args) = parse(&["serve", "--memory"]).unwrap().command else {
            panic!("expected serve");
        };
        assert!(args.memory);
        assert_eq!(args.shutdown_grace, Duration::from_secs(10));
    }

    #[test]
    fn flags_with_optional_booleans() {
        let Command::Subscriptions(SubscriptionsCommand::Update(args)) = parse(&[
            "subscriptions",
            "update",
            "work",
            "--ordering",
            "--retain-acked=false",
        ])
        .unwrap()
        .command
        else {
            panic!("expected subscriptions update");
        };
        assert_eq!(args.settings.ordering, Some(true));
        assert_eq!(args.settings.retain_acked, Some(false));
        assert_eq!(args.settings.ack_deadline, None);
    }

    #[test]
    fn bad_values_are_usage_errors() {
        for args in [
            &["topics", "create", "x"][..],
            &["publish", "orders", "hi", "--attribute", "novalue"],
            &[
                "subscriptions",
                "create",
                "work",
                "--topic",
                "orders",
                "--ack-deadline",
                "soon",
            ],
            &["pull", "work", "--max", "0"],
            &[
                "subscriptions",
                "update",
                "work",
                "--clear-retry-policy",
                "--min-backoff",
                "1s",
            ],
        ] {
            assert!(parse(args).is_err(), "{args:?} should be rejected");
        }
    }
}
