use super::*;
use coremq_wire::batch::BatchBuilder;

fn batch_of(value_bytes: usize) -> Vec<u8> {
    let mut builder = BatchBuilder::with_capacity(value_bytes + 128);
    builder
        .push(1, None, &vec![7u8; value_bytes], &[])
        .expect("push");
    builder.finish()
}

fn fetched(batches: &[Vec<u8>]) -> FetchResult {
    Ok(PartitionFetch {
        batches: batches.concat(),
        high_watermark: 10,
        log_start_offset: 0,
        data_loss: None,
    })
}

#[test]
fn encoded_size_is_bounded() {
    let max_frame_bytes = 256 << 10;
    let budget = response_budget_bytes(max_frame_bytes);
    let topics: Vec<String> = (0..MAX_FETCH_PARTITIONS)
        .map(|i| format!("topic-with-a-long-name-{i:0>40}"))
        .collect();
    let names: Vec<(&str, u32)> = topics.iter().map(|t| (t.as_str(), 7)).collect();
    let share = partition_share_bytes(budget, &names).expect("fits");
    let mut results: Vec<FetchResult> = (0..names.len())
        .map(|i| match i % 3 {
            0 => Err(RequestError::new(
                ErrorCode::UnknownTopic,
                format!("unknown topic '{}'", names[i].0),
            )),
            // Bigger than the share: the engine returns one batch anyway.
            1 => fetched(&[batch_of(share as usize * 2)]),
            _ => fetched(&[batch_of(10), batch_of(20), batch_of(30)]),
        })
        .collect();
    fit_to_budget(&names, &mut results, budget).expect("fits");
    let body = encode(&names, &results);
    assert!(
        body.bytes().len() + FRAME_HEADER_LEN <= max_frame_bytes as usize,
        "{} bytes",
        body.bytes().len()
    );
    // Whatever was kept is whole batches.
    for result in results.iter().flatten() {
        for batch in coremq_wire::batch::split_batches(&result.batches) {
            coremq_wire::batch::verify_batch(batch.expect("whole batch")).expect("intact");
        }
    }
}

#[test]
fn one_partition_gets_the_whole_frame() {
    let budget = response_budget_bytes(1 << 20);
    let share = partition_share_bytes(budget, &[("t", 0)]).expect("fits");
    assert!(share as usize > budget - 200, "{share} of {budget}");
    let batches = [batch_of(1000), batch_of(1000)];
    let mut results = vec![fetched(&batches)];
    fit_to_budget(&[("t", 0)], &mut results, budget).expect("fits");
    let kept = results[0].as_ref().map(|f| f.batches.len()).ok();
    assert_eq!(kept, Some(2 * batches[0].len()));
}

#[test]
fn a_batch_larger_than_any_response_is_too_large() {
    let budget = response_budget_bytes(4096);
    let mut results = vec![fetched(&[batch_of(8192)])];
    fit_to_budget(&[("t", 0)], &mut results, budget).expect("fits");
    let error = results[0].as_ref().expect_err("too large");
    assert_eq!(error.code, ErrorCode::TooLarge);
}

#[test]
fn duplicates_are_refused() {
    assert!(check_unique(&[("a", 0), ("a", 1), ("b", 0)]).is_ok());
    let error = check_unique(&[("a", 0), ("b", 0), ("a", 0)]).expect_err("duplicate");
    assert_eq!(error.code, ErrorCode::InvalidRequest);
    assert!(
        error.message.contains("'a' partition 0"),
        "{}",
        error.message
    );
}

#[test]
fn too_many_names_for_the_frame_is_too_large() {
    let names = vec![("t", 0); 100];
    let error = partition_share_bytes(1000, &names).expect_err("no room");
    assert_eq!(error.code, ErrorCode::TooLarge);
}
