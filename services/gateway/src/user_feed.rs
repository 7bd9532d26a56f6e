//! The live session list of `GATEWAY_AUTH=jwt` users: one core
//! subscription per user with sockets on this gateway, to
//! `chat.users.<user>`, fanned out to those sockets as `session_list`
//! frames; a revocation notice there closes them all (1008 `user revoked`).
//! Built like `live` (a bounded broadcast, never waiting for a socket),
//! without replay: a socket that misses a notice has a stale list until the
//! next change or `GET /api/sessions`, and the list itself is the truth.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use protocol::frames::ControlFrame;
use protocol::users::UserNotice;
use protocol::{subjects, UserKey};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// Notices queued per user on this gateway: a list changes a few times per
/// answer, never in bursts.
const RING: usize = 16;

struct Feed {
    sender: broadcast::Sender<Arc<ControlFrame>>,
    /// Fires on the user's revocation; replaced by a fresh one after, for
    /// the sockets that log in again with a new token.
    revoked: CancellationToken,
    sockets: usize,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Clone)]
pub struct UserFeeds {
    client: async_nats::Client,
    feeds: Arc<Mutex<HashMap<UserKey, Feed>>>,
}

/// A socket's place in its user's feed; dropping the last one unsubscribes.
pub struct UserAttachment {
    pub receiver: broadcast::Receiver<Arc<ControlFrame>>,
    /// Fires when the user's sockets are revoked.
    pub revoked: CancellationToken,
    feeds: UserFeeds,
    user: UserKey,
}

impl Drop for UserAttachment {
    fn drop(&mut self) {
        let Ok(mut feeds) = self.feeds.feeds.lock() else {
            return;
        };
        if let Some(feed) = feeds.get_mut(&self.user) {
            feed.sockets = feed.sockets.saturating_sub(1);
            if feed.sockets == 0 {
                if let Some(feed) = feeds.remove(&self.user) {
                    feed.task.abort();
                }
            }
        }
    }
}

impl UserFeeds {
    pub fn new(client: async_nats::Client) -> Self {
        Self {
            client,
            feeds: Arc::default(),
        }
    }

    fn join(&self, feed: &mut Feed, user: &UserKey) -> UserAttachment {
        feed.sockets += 1;
        UserAttachment {
            receiver: feed.sender.subscribe(),
            revoked: feed.revoked.clone(),
            feeds: self.clone(),
            user: user.clone(),
        }
    }

    /// Attaches a socket to its user's notices. When this returns the
    /// server has the subscription: a change made from now on arrives.
    pub async fn attach(&self, user: &UserKey) -> Result<UserAttachment, async_nats::Error> {
        {
            let mut feeds = self.feeds.lock().map_err(|_| "user feeds lock poisoned")?;
            if let Some(feed) = feeds.get_mut(user) {
                return Ok(self.join(feed, user));
            }
        }
        let subscriber = self.client.subscribe(subjects::user_feed(user)).await?;
        self.client.flush().await?;
        let mut feeds = self.feeds.lock().map_err(|_| "user feeds lock poisoned")?;
        if let Some(feed) = feeds.get_mut(user) {
            return Ok(self.join(feed, user));
        }
        let (sender, _) = broadcast::channel(RING);
        let task = tokio::spawn(forward(
            subscriber,
            sender.clone(),
            self.clone(),
            user.clone(),
        ));
        let feed = feeds.entry(user.clone()).or_insert(Feed {
            sender,
            revoked: CancellationToken::new(),
            sockets: 0,
            task,
        });
        Ok(self.join(feed, user))
    }

    fn revoke(&self, user: &UserKey) {
        if let Ok(mut feeds) = self.feeds.lock() {
            if let Some(feed) = feeds.get_mut(user) {
                feed.revoked.cancel();
                feed.revoked = CancellationToken::new();
            }
        }
    }
}

async fn forward(
    mut subscriber: async_nats::Subscriber,
    sender: broadcast::Sender<Arc<ControlFrame>>,
    feeds: UserFeeds,
    user: UserKey,
) {
    while let Some(message) = subscriber.next().await {
        match serde_json::from_slice::<UserNotice>(&message.payload) {
            Ok(UserNotice::Session {
                change,
                session_id,
                session,
            }) => {
                let frame = ControlFrame::SessionList {
                    change,
                    session_id,
                    session,
                };
                // No socket at this instant is fine: they come and go.
                let _ = sender.send(Arc::new(frame));
            }
            Ok(UserNotice::Revoked { .. }) => feeds.revoke(&user),
            Err(e) => tracing::debug!(error = %e, "unreadable user notice; ignored"),
        }
    }
}
