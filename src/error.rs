//! The errors a peer can see, each with a stable protoo code and gRPC status.
//!
//! Mapped once here: [`CenterError::protoo_code`] for WebSocket peers and the
//! `From<CenterError> for tonic::Status` impl for gRPC callers.

/// A failure of a room-service operation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CenterError {
    /// A field is missing, empty or of the wrong type. `reason` is the exact
    /// protoo `errorReason` (e.g. "Invalid roomId or userId").
    #[error("{reason}")]
    InvalidArgument {
        /// The offending field (proto name), for gRPC callers.
        field: &'static str,
        /// Human reason.
        reason: String,
    },
    /// The room does not exist.
    #[error("room not found: {0}")]
    RoomNotFound(String),
    /// The user is not in the room.
    #[error("user not found: {0}")]
    UserNotFound(String),
    /// The user publishes no stream with this pusher id (a pull named a
    /// stream of a process that is gone, or one never pushed).
    #[error("pusher not found: {0}")]
    PusherNotFound(String),
    /// The protoo method is not known.
    #[error("Unknown method: {0}")]
    UnknownMethod(String),
    /// The peer may not do this.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// A configured limit is reached (rooms or users per session).
    #[error("limit reached: {0}")]
    LimitReached(String),
    /// The request clashes with what another live session holds (a user
    /// joined from another session under `duplicate_user: reject`, an MSU id
    /// registered by another session).
    #[error("{0}")]
    Conflict(String),
    /// A recording (or another named thing) does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The state does not allow it yet (a room without an MSU to record
    /// it, a running recording to delete).
    #[error("{0}")]
    FailedPrecondition(String),
    /// An event-feed cursor outside the events the center keeps.
    #[error("{0}")]
    OutOfRange(String),
    /// The center is shutting down.
    #[error("shutting down")]
    ShuttingDown,
    /// The shared state store (Redis) could not take or confirm the change
    /// in time; it was not applied by this request.
    #[error("state store unavailable")]
    StoreUnavailable,
    /// The shared state store took the change but did not confirm it in
    /// time (or the connection dropped after it was sent): it may still
    /// take effect, on every node alike. Asking again is safe for a join or
    /// a push (they replace), and the listing says which it was.
    #[error("state store did not confirm in time: the change may still take effect")]
    StoreUnconfirmed,
    /// The change came from a session of a lease this cluster node lost
    /// (it was declared lost while paused or cut off): it was not applied,
    /// and the session is closing with 1013 "node lost" so that its peer
    /// reconnects. Nothing of a lost lease reaches the log.
    #[error("this node lost its lease: the change was not applied; reconnect")]
    LeaseLost,
    /// A bug or an impossible state; logged.
    #[error("internal error: {0}")]
    Internal(String),
}

impl CenterError {
    /// An [`CenterError::InvalidArgument`] for `field` with `reason`.
    pub fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field,
            reason: reason.into(),
        }
    }

    /// The protoo `errorCode`.
    pub fn protoo_code(&self) -> u16 {
        match self {
            Self::InvalidArgument { .. } => 400,
            Self::Forbidden(_) => 403,
            Self::RoomNotFound(_)
            | Self::UserNotFound(_)
            | Self::PusherNotFound(_)
            | Self::UnknownMethod(_)
            | Self::NotFound(_) => 404,
            Self::FailedPrecondition(_) => 412,
            Self::Conflict(_) => 409,
            Self::OutOfRange(_) => 400,
            Self::LimitReached(_) => 429,
            Self::ShuttingDown | Self::StoreUnavailable | Self::LeaseLost => 503,
            Self::StoreUnconfirmed => 504,
            Self::Internal(_) => 500,
        }
    }
}

impl From<CenterError> for tonic::Status {
    fn from(e: CenterError) -> Self {
        use tonic::Status;
        match &e {
            CenterError::InvalidArgument { field, reason } => {
                Status::invalid_argument(format!("{field}: {reason}"))
            }
            CenterError::RoomNotFound(_)
            | CenterError::UserNotFound(_)
            | CenterError::PusherNotFound(_)
            | CenterError::NotFound(_) => Status::not_found(e.to_string()),
            CenterError::FailedPrecondition(_) => Status::failed_precondition(e.to_string()),
            CenterError::UnknownMethod(_) => Status::unimplemented(e.to_string()),
            CenterError::Forbidden(_) => Status::permission_denied(e.to_string()),
            CenterError::LimitReached(_) => Status::resource_exhausted(e.to_string()),
            CenterError::Conflict(_) => Status::already_exists(e.to_string()),
            CenterError::OutOfRange(_) => Status::out_of_range(e.to_string()),
            CenterError::ShuttingDown | CenterError::StoreUnavailable | CenterError::LeaseLost => {
                Status::unavailable(e.to_string())
            }
            // gRPC's own word for "may have completed".
            CenterError::StoreUnconfirmed => Status::deadline_exceeded(e.to_string()),
            CenterError::Internal(_) => Status::internal(e.to_string()),
        }
    }
}

impl From<&CenterError> for crate::proto::Error {
    fn from(e: &CenterError) -> Self {
        Self {
            code: u32::from(e.protoo_code()),
            reason: e.to_string(),
        }
    }
}
