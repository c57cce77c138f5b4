//! `pilot-msu` with a real center: SFU-like protoo peers pull a publisher
//! through the hub, real `ffmpeg` plays the publisher's SFU (H264 and Opus
//! RTP to the address the center's forwarded pull names), and the peers'
//! UDP sockets count what arrives. Tests that need `ffmpeg` say so and
//! pass without it (CI installs it).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly by design

mod common;

use common::*;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Issue 29: three SFUs pull one publisher through the hub; each receives
/// every packet ffmpeg sent (count, SSRC, payload type, order); a PLI from
/// the destinations reaches the publisher's SFU once however often it is
/// asked; a NACK is answered from the hub's history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_destination_gets_every_packet_key_frames_are_asked_once_nacks_are_answered() {
    bounded(async {
        if !ffmpeg_available() {
            return;
        }
        let center = center().await;
        let (msu, _stop) = msu_in_process(&center).await;
        let (sock_b, sock_c, sock_d) = (udp().await, udp().await, udp().await);
        let ports = [port(&sock_b), port(&sock_c), port(&sock_d)];
        let _peers = room_of_sfus(&center, msu.media, &ports).await;
        let key = ("r".to_owned(), "u1".to_owned());
        until("the hub has the three destinations", || {
            msu.hub.destinations(&key).len() == 3
        })
        .await;
        let seen_b = tap(sock_b.clone(), None);
        let seen_c = tap(sock_c.clone(), None);
        let seen_d = tap(sock_d.clone(), None);
        // SFU A's send relay: what ffmpeg sends, counted, on to the hub.
        let relay_a = udp().await;
        let sent = tap(relay_a.clone(), Some(msu.media));
        ffmpeg_publishes(port(&relay_a), 2).await;

        let count =
            |s: &Arc<Mutex<Seen>>, ssrc: u32| s.lock().unwrap().rtp.get(&ssrc).map_or(0, Vec::len);
        let (video, audio) = (count(&sent, VIDEO), count(&sent, AUDIO));
        assert!(
            video > 40 && audio > 40,
            "ffmpeg sent {video} video, {audio} audio packets"
        );
        for (name, seen) in [("B", &seen_b), ("C", &seen_c), ("D", &seen_d)] {
            until(&format!("{name} gets every packet"), || {
                count(seen, VIDEO) >= video && count(seen, AUDIO) >= audio
            })
            .await;
            let s = seen.lock().unwrap();
            assert_eq!(s.rtp[&VIDEO].len(), video, "{name}: video");
            assert_eq!(s.rtp[&AUDIO].len(), audio, "{name}: audio");
            assert!(
                s.rtp[&VIDEO].iter().all(|(pt, _, _)| *pt == 108),
                "{name}: video PT"
            );
            assert!(
                s.rtp[&AUDIO].iter().all(|(pt, _, _)| *pt == 111),
                "{name}: audio PT"
            );
            let order_b: Vec<u16> = s.rtp[&VIDEO].iter().map(|(_, q, _)| *q).collect();
            let order_a: Vec<u16> = sent.lock().unwrap().rtp[&VIDEO]
                .iter()
                .map(|(_, q, _)| *q)
                .collect();
            assert_eq!(order_b, order_a, "{name}: the same packets");
        }

        // Key frames: B asks three times at once, C once: one PLI upstream.
        for _ in 0..3 {
            sock_b.send_to(&pli(VIDEO), msu.media).await.unwrap();
        }
        sock_c.send_to(&pli(VIDEO), msu.media).await.unwrap();
        until("a PLI reaches the publisher's SFU", || {
            !sent.lock().unwrap().rtcp.is_empty()
        })
        .await;
        let stats = msu.hub.stats();
        until("the other requests are coalesced", || {
            stats
                .keyframe_coalesced
                .load(std::sync::atomic::Ordering::Relaxed)
                == 3
        })
        .await;
        {
            let s = sent.lock().unwrap();
            assert_eq!(s.rtcp.len(), 1, "one PLI upstream");
            let p = &s.rtcp[0];
            assert_eq!((p[0] & 0x1f, p[1]), (1, 206), "a PLI");
            assert_eq!(u32::from_be_bytes([p[8], p[9], p[10], p[11]]), VIDEO);
        }

        // C lost a packet: the hub resends it from its history.
        let last = *seen_c.lock().unwrap().rtp[&VIDEO].last().unwrap();
        sock_c
            .send_to(&nack(VIDEO, last.1), msu.media)
            .await
            .unwrap();
        until("the NACKed packet comes again", || {
            seen_c.lock().unwrap().rtp[&VIDEO]
                .iter()
                .filter(|(_, q, _)| *q == last.1)
                .count()
                == 2
        })
        .await;
        assert_eq!(
            stats
                .nack_answered
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );

        // The operator sees the relay's packets: the MSU reports them (in
        // to the hub, out to the three destinations, and the resent one).
        let c = center.center().clone();
        let total = (video + audio) as u64;
        until("the center lists the relay's packets", || {
            c.list_relays("r")
                .first()
                .is_some_and(|r| r.packets_in == total && r.packets_out == 3 * total + 1)
        })
        .await;
    })
    .await;
}

/// Issue 29: `kill -9` of the MSU and its return on the same address: the
/// publisher's SFU keeps sending there, and the relays resume with no new
/// pull (the center gives the MSU back its relays when it registers).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_msu_killed_and_back_on_its_address_resumes_its_relays_with_no_new_pull() {
    bounded(async {
        let center = center().await;
        // A port for the MSU, the same both times.
        let media_port = free_udp_port();
        let dir = std::env::temp_dir().join(format!("pilot-msu-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("msu.yaml");
        std::fs::write(&config, msu_yaml(&center, media_port, media_port)).unwrap();
        let spawn = || spawn_msu(&config);
        let mut msu = spawn();
        registered(&center).await;
        let media: SocketAddr = format!("127.0.0.1:{media_port}").parse().unwrap();
        let (sock_b, sock_c) = (udp().await, udp().await);
        let (mut a, _pullers) = room_of_sfus(&center, media, &[port(&sock_b), port(&sock_c)]).await;
        let seen_b = tap(sock_b.clone(), None);
        let relay_a = udp().await;
        let mut seq = 0u16;
        let mut send = || {
            seq = seq.wrapping_add(1);
            let mut p = vec![0x80, 108];
            p.extend_from_slice(&seq.to_be_bytes());
            p.extend_from_slice(&[0, 0, 0, 0]);
            p.extend_from_slice(&VIDEO.to_be_bytes());
            p.extend_from_slice(&[0u8; 100]);
            p
        };
        let got = |n: usize| {
            let seen_b = seen_b.clone();
            move || seen_b.lock().unwrap().rtp.get(&VIDEO).map_or(0, Vec::len) >= n
        };
        // Packets flow (sent until the hub has B: its relay may still be
        // on its way).
        let deadline = tokio::time::Instant::now() + WAIT;
        while !got(1)() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no packet through the hub"
            );
            relay_a.send_to(&send(), media).await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        msu.start_kill().unwrap();
        msu.wait().await.unwrap();
        let c = center.center().clone();
        until("the center sees the MSU gone", || c.list_msus().is_empty()).await;
        let before = seen_b.lock().unwrap().rtp[&VIDEO].len();
        let mut msu = spawn();
        registered(&center).await;
        // The SFU sends on to the same address, as the real one does.
        let deadline = tokio::time::Instant::now() + WAIT;
        while !got(before + 1)() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the relay did not resume"
            );
            relay_a.send_to(&send(), media).await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // No new pull reached the publisher's SFU.
        a.none_of("pullRemoteStream").await;
        assert_eq!(center.center().list_relays("r").len(), 1);
        msu.start_kill().unwrap();
        std::fs::remove_dir_all(&dir).ok();
    })
    .await;
}
