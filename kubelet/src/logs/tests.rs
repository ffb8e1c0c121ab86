//! The writer and the reader together: what `kubectl logs` would get back.

use std::time::Duration;

use futures::StreamExt;
use tokio::io::AsyncWriteExt;

use super::reader::{instance_path, instances, stream};
use super::*;

async fn collect(s: impl futures::Stream<Item = std::io::Result<bytes::Bytes>>) -> String {
    let chunks: Vec<_> = s.collect().await;
    let bytes: Vec<u8> = chunks.into_iter().flat_map(|c| c.unwrap()).collect();
    String::from_utf8(bytes).unwrap()
}

async fn written(dir: &std::path::Path, limits: LogLimits, lines: &[&str]) -> std::path::PathBuf {
    let path = instance_path(dir, 0);
    let (sink, writer) = LogSink::open(path.clone(), limits, &LogHub::default())
        .await
        .unwrap();
    let mut out = sink.stream(Stream::Stdout);
    for line in lines {
        out.write_all(line.as_bytes()).await.unwrap();
    }
    drop((sink, out));
    writer.await.unwrap();
    path
}

#[tokio::test]
async fn tail_timestamps_and_limit_shape_the_output() {
    let dir = tempfile::tempdir().unwrap();
    let path = written(
        dir.path(),
        LogLimits::default(),
        &["one\n", "two\n", "three\n"],
    )
    .await;
    let all = collect(stream(path.clone(), LogQuery::default(), None)).await;
    assert_eq!(all, "one\ntwo\nthree\n");
    let tail = LogQuery {
        tail_lines: Some(2),
        ..Default::default()
    };
    assert_eq!(
        collect(stream(path.clone(), tail, None)).await,
        "two\nthree\n"
    );
    let zero = LogQuery {
        tail_lines: Some(0),
        ..Default::default()
    };
    assert_eq!(collect(stream(path.clone(), zero, None)).await, "");
    let limited = LogQuery {
        limit_bytes: Some(6),
        ..Default::default()
    };
    assert_eq!(
        collect(stream(path.clone(), limited, None)).await,
        "one\ntw"
    );
    let stamped = LogQuery {
        timestamps: true,
        ..Default::default()
    };
    let text = collect(stream(path, stamped, None)).await;
    let first = text.lines().next().unwrap();
    let (time, rest) = first.split_once(' ').unwrap();
    assert!(time.parse::<jiff::Timestamp>().is_ok(), "{first}");
    assert_eq!(rest, "one");
}

#[tokio::test]
async fn since_drops_older_lines() {
    let dir = tempfile::tempdir().unwrap();
    let path = written(dir.path(), LogLimits::default(), &["old\n"]).await;
    let future = LogQuery {
        since: Some(jiff::Timestamp::now() + jiff::SignedDuration::from_secs(60)),
        ..Default::default()
    };
    assert_eq!(collect(stream(path.clone(), future, None)).await, "");
    let past = LogQuery {
        since: Some(jiff::Timestamp::now() - jiff::SignedDuration::from_secs(60)),
        ..Default::default()
    };
    assert_eq!(collect(stream(path, past, None)).await, "old\n");
}

#[tokio::test]
async fn rotated_files_are_read_oldest_first() {
    let dir = tempfile::tempdir().unwrap();
    let limits = LogLimits {
        max_file_bytes: 200,
        max_files: 100,
    };
    let lines: Vec<String> = (0..40).map(|i| format!("line {i}\n")).collect();
    let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
    let path = written(dir.path(), limits, &refs).await;
    assert!(
        std::fs::read_dir(dir.path()).unwrap().count() > 3,
        "it rotated"
    );
    assert_eq!(
        collect(stream(path, LogQuery::default(), None)).await,
        lines.concat()
    );
    assert_eq!(instances(dir.path()).await.unwrap(), vec![0]);
}

#[tokio::test]
async fn follow_sends_new_lines_through_rotation_and_ends_with_the_writer() {
    let dir = tempfile::tempdir().unwrap();
    let hub = LogHub::default();
    let path = instance_path(dir.path(), 0);
    let limits = LogLimits {
        max_file_bytes: 100,
        max_files: 3,
    };
    let (sink, writer) = LogSink::open(path.clone(), limits, &hub).await.unwrap();
    let mut out = sink.stream(Stream::Stdout);
    out.write_all(b"before\n").await.unwrap();
    let follow = LogQuery {
        follow: true,
        ..Default::default()
    };
    // Wait for the first line to land before subscribing, as a late follower would.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while std::fs::read_to_string(&path)
        .unwrap_or_default()
        .is_empty()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "first line never flushed"
        );
        tokio::task::yield_now().await;
    }
    let live = hub.subscribe(&path);
    assert!(live.is_some());
    let mut followed = Box::pin(stream(path.clone(), follow, live));
    let first = followed.next().await.unwrap().unwrap();
    assert_eq!(&first[..], b"before\n");
    // Enough to rotate the 100-byte file several times while following.
    for i in 0..10 {
        out.write_all(format!("after {i}\n").as_bytes())
            .await
            .unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), followed.next())
            .await
            .expect("a followed line arrives without polling")
            .unwrap()
            .unwrap();
        assert_eq!(std::str::from_utf8(&got).unwrap(), format!("after {i}\n"));
    }
    drop((sink, out));
    writer.await.unwrap();
    let rest = tokio::time::timeout(Duration::from_secs(5), collect(followed))
        .await
        .expect("the follow ends when the writer does");
    assert_eq!(rest, "");
}

#[tokio::test]
async fn limit_bytes_reads_only_as_far_as_it_needs() {
    // The log is a pipe whose writer sends three records and then holds it open: reading
    // past what limitBytes asks for would wait for ever.
    let dir = tempfile::tempdir().unwrap();
    let path = instance_path(dir.path(), 0);
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &path,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .unwrap();
    let (done, hold) = std::sync::mpsc::channel::<()>();
    let writer_path = path.clone();
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        let mut pipe = std::fs::OpenOptions::new()
            .write(true)
            .open(writer_path)
            .unwrap();
        for text in ["one", "two", "three"] {
            writeln!(pipe, "2026-01-01T00:00:00Z stdout F {text}").unwrap();
        }
        // Held open until the test is done.
        let _ = hold.recv();
    });
    let limited = LogQuery {
        limit_bytes: Some(6),
        ..Default::default()
    };
    let got = tokio::time::timeout(
        Duration::from_secs(10),
        collect(stream(path, limited, None)),
    )
    .await
    .expect("the reader stopped at limitBytes instead of reading on");
    assert_eq!(got, "one\ntw");
    drop(done);
    writer.join().unwrap();
}
