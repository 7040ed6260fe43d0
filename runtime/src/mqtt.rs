//! MQTT client plumbing both binaries share: options from a typed URL, the loop that owns a
//! subscriber's event loop, and the task that sends manual acknowledgements in order.

use std::ops::ControlFlow;
use std::str::FromStr;
use std::time::Duration;

use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, MqttOptions, Outgoing, Packet, Publish, QoS,
    SubscribeFilter, SubscribeReasonCode, Transport,
};
use secrecy::{ExposeSecret as _, SecretString};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use url::Url;

use crate::Backoff;

/// The largest packet MQTT allows. Clients accept anything the protocol does, so that no message
/// can break a connection (and come back forever after the reconnect); sizes are limited, and
/// counted, where messages are read.
pub const MAX_PACKET_SIZE: usize = 268_435_455;

/// Seconds between keep-alive pings.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// `mqtt://user:password@host:port?client_id=id` (`mqtts://` for TLS). `Debug` never shows the
/// password.
#[derive(Debug, Clone)]
pub struct MqttUrl {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    pub username: Option<String>,
    pub password: Option<SecretString>,
    pub client_id: Option<String>,
}

impl FromStr for MqttUrl {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let url = Url::parse(s).map_err(|e| format!("not a URL: {e}"))?;
        let tls = match url.scheme() {
            "mqtt" | "tcp" => false,
            "mqtts" | "ssl" => true,
            other => return Err(format!("scheme must be mqtt or mqtts, not {other}")),
        };
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or("the URL has no host")?;
        let decode = |s: &str| {
            url::form_urlencoded::parse(format!("x={s}").as_bytes())
                .next()
                .map(|(_, v)| v.into_owned())
        };
        Ok(MqttUrl {
            tls,
            host: host.to_owned(),
            port: url.port().unwrap_or(if tls { 8883 } else { 1883 }),
            username: Some(url.username())
                .filter(|u| !u.is_empty())
                .and_then(decode),
            password: url.password().and_then(decode).map(SecretString::from),
            client_id: url
                .query_pairs()
                .find(|(k, _)| k == "client_id")
                .map(|(_, v)| v.into_owned()),
        })
    }
}

impl MqttUrl {
    /// rumqttc options; `default_client_id` is used unless the URL names one.
    pub fn options(&self, default_client_id: &str) -> MqttOptions {
        let mut options =
            MqttOptions::new(self.client_id_or(default_client_id), &self.host, self.port);
        if let Some((user, password)) = self.credentials() {
            options.set_credentials(user, password);
        }
        if self.tls {
            options.set_transport(Transport::tls_with_default_config());
        }
        options.set_keep_alive(KEEP_ALIVE);
        options.set_max_packet_size(MAX_PACKET_SIZE, MAX_PACKET_SIZE);
        options
    }

    /// The same for an MQTT 5 client (whose acknowledgements carry reason codes, such as "no
    /// matching subscribers"); `session_expiry` keeps the session that long after a disconnect.
    pub fn options_v5(
        &self,
        default_client_id: &str,
        session_expiry: Option<Duration>,
    ) -> rumqttc::v5::MqttOptions {
        let mut options = rumqttc::v5::MqttOptions::new(
            self.client_id_or(default_client_id),
            &self.host,
            self.port,
        );
        if let Some((user, password)) = self.credentials() {
            options.set_credentials(user, password);
        }
        if self.tls {
            options.set_transport(Transport::tls_with_default_config());
        }
        options.set_keep_alive(KEEP_ALIVE);
        options.set_max_packet_size(u32::try_from(MAX_PACKET_SIZE).ok());
        options.set_clean_start(session_expiry.is_none());
        options.set_session_expiry_interval(
            session_expiry.map(|d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX)),
        );
        options
    }

    fn client_id_or(&self, default: &str) -> String {
        self.client_id.clone().unwrap_or_else(|| default.to_owned())
    }

    /// User and password (empty when the URL has none), if the URL names a user.
    fn credentials(&self) -> Option<(&str, String)> {
        let password = self
            .password
            .as_ref()
            .map(|p| p.expose_secret().to_owned())
            .unwrap_or_default();
        self.username.as_deref().map(|user| (user, password))
    }
}

/// What acknowledging a received message needs.
#[derive(Debug, Clone, Copy)]
pub struct Ack {
    pkid: u16,
    qos: QoS,
}

impl Ack {
    pub fn of(publish: &Publish) -> Ack {
        Ack {
            pkid: publish.pkid,
            qos: publish.qos,
        }
    }

    /// The packet id being acknowledged (free for the broker's next message afterwards).
    pub fn pkid(&self) -> u16 {
        self.pkid
    }
}

/// Sends acks in the order they were queued, waiting for room in the client's channel rather
/// than dropping one. Ends when every sender is gone, or when the event loop is (the broker then
/// redelivers what was not acknowledged).
pub async fn acker(client: AsyncClient, mut acks: mpsc::UnboundedReceiver<Ack>) {
    while let Some(ack) = acks.recv().await {
        let mut publish = Publish::new("", ack.qos, Vec::new());
        publish.pkid = ack.pkid;
        if client.ack(&publish).await.is_err() {
            return;
        }
    }
}

/// What a subscriber's connection went through, for the caller's logs, counters and verdict.
#[derive(Debug)]
pub enum Status<'a> {
    /// Connected; with `session_present` the broker kept our subscriptions, else we subscribed.
    Connected {
        session_present: bool,
    },
    Subscribed,
    /// The broker refused at least one of the filters (its ACL, usually).
    SubscriptionRefused,
    /// A message, about to be handed over.
    Received,
    /// Our acknowledgement of the message with this packet id went out on the connection.
    AckSent(u16),
    /// The connection failed; it is retried with backoff unless the caller breaks.
    Lost(&'a ConnectionError),
}

/// When a subscriber subscribes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resubscribe {
    /// On every connection whose session the broker did not keep (a kept session keeps its
    /// subscriptions; subscribing again would also resend retained messages).
    IfSessionLost,
    /// On every connection: Mosquitto restores a persistent session after its restart but not
    /// the session's *shared* subscriptions, so a shared subscriber must renew them every time.
    Always,
}

/// Owns a subscriber's event loop and only polls it: subscribes to `filters` at QoS 1 (when
/// `resubscribe` says) and hands each message to `tx`. Cancelling `intake` stops
/// the handing over (messages stay unacknowledged at the broker) while acks still flow. Returns
/// once the disconnect went out and the broker closed the connection (`read_until_closed`), or
/// with the error `observe` breaks with.
pub async fn receive(
    mut eventloop: EventLoop,
    client: AsyncClient,
    filters: Vec<String>,
    resubscribe: Resubscribe,
    tx: mpsc::Sender<Publish>,
    intake: CancellationToken,
    mut observe: impl FnMut(Status<'_>) -> ControlFlow<anyhow::Error>,
) -> anyhow::Result<()> {
    let mut tx = Some(tx);
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
    loop {
        let event = tokio::select! {
            () = intake.cancelled(), if tx.is_some() => {
                tx = None;
                continue;
            }
            event = eventloop.poll() => event,
        };
        let status = match &event {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                backoff.reset();
                if !ack.session_present || resubscribe == Resubscribe::Always {
                    let subscriptions = filters
                        .iter()
                        .map(|f| SubscribeFilter::new(f.clone(), QoS::AtLeastOnce));
                    if let Err(e) = client.try_subscribe_many(subscriptions) {
                        tracing::error!(?filters, error = %e, "cannot subscribe");
                    }
                }
                Status::Connected {
                    session_present: ack.session_present,
                }
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                let refused = ack
                    .return_codes
                    .iter()
                    .any(|c| matches!(c, SubscribeReasonCode::Failure));
                if refused {
                    Status::SubscriptionRefused
                } else {
                    Status::Subscribed
                }
            }
            Ok(Event::Incoming(Packet::Publish(_))) => Status::Received,
            Ok(Event::Outgoing(Outgoing::PubAck(pkid))) => Status::AckSent(*pkid),
            Ok(Event::Outgoing(Outgoing::Disconnect)) => {
                read_until_closed(&mut eventloop).await;
                return Ok(());
            }
            Ok(_) => continue,
            Err(e) => Status::Lost(e),
        };
        if let ControlFlow::Break(e) = observe(status) {
            return Err(e);
        }
        match event {
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                if let Some(sender) = &tx {
                    // Fails only when the receiver is gone (shutting down): the message stays
                    // unacknowledged and is redelivered.
                    let _ = sender.send(publish).await;
                }
            }
            Err(_) => tokio::time::sleep(backoff.next_delay()).await,
            Ok(_) => {}
        }
    }
}

/// How long a subscriber that sent its DISCONNECT waits for the broker to close the connection.
const CLOSE_DEADLINE: Duration = Duration::from_secs(1);

/// After our DISCONNECT: reads (and drops) what the broker still sends until it closes the
/// connection. Closing first, with its messages unread in our socket, makes the kernel answer with
/// a reset, and a broker that gets the reset before it read our last acknowledgements drops them:
/// it then redelivers messages that were stored (seen: 53 rows stored twice after a processor's
/// SIGTERM under a backlog). The messages read here were never handed over, so they come back.
async fn read_until_closed(eventloop: &mut EventLoop) {
    let _ = tokio::time::timeout(CLOSE_DEADLINE, async {
        while eventloop.poll().await.is_ok() {}
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mqtt_urls_parse_and_never_print_their_password() {
        let url: MqttUrl = "mqtts://bridge:s%40cret@broker.example:9999?client_id=plant-7"
            .parse()
            .expect("valid");
        assert!(url.tls);
        assert_eq!((url.host.as_str(), url.port), ("broker.example", 9999));
        assert_eq!(url.username.as_deref(), Some("bridge"));
        assert_eq!(
            url.password.as_ref().map(|p| p.expose_secret()),
            Some("s@cret")
        );
        assert_eq!(url.client_id.as_deref(), Some("plant-7"));
        let shown = format!("{url:?}");
        assert!(
            !shown.contains("s@cret") && !shown.contains("s%40cret"),
            "{shown}"
        );
        let plain: MqttUrl = "mqtt://localhost".parse().expect("valid");
        assert_eq!((plain.port, plain.tls, plain.username), (1883, false, None));
        assert!("http://x".parse::<MqttUrl>().is_err());
    }

    #[test]
    fn a_client_id_in_the_url_wins() {
        let named: MqttUrl = "mqtt://h?client_id=stable".parse().expect("valid");
        assert_eq!(named.options("fallback").client_id(), "stable");
        let plain: MqttUrl = "mqtt://h".parse().expect("valid");
        assert_eq!(plain.options("fallback").client_id(), "fallback");
        assert_eq!(plain.options("x").keep_alive(), KEEP_ALIVE);
    }
}
