//! Threshold OPRF patient keys: agreement across every choice of evaluators, interop with an
//! independent RFC 9497 implementation (the `voprf` crate), and the attacks the design must
//! stop (t − 1 evaluators, a bad partial, what an evaluator sees).

use curve25519_dalek::ristretto::CompressedRistretto;
use curve25519_dalek::scalar::Scalar;
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use voprf::{BlindedElement, EvaluationElement, Proof, Ristretto255, VoprfClient, VoprfServer};
use zorgmesh_protocol::oprf::{
    deal_with_coefficients, evaluate, hash_to_group, patient_input, patient_key_with_whole_key,
    BlindedBatch, DleqProof, EvaluationRequest, EvaluatorEntry, EvaluatorSet, EvaluatorSetBody,
    KeyShare, OprfError, PartialEvaluation, SUITE_ID,
};
use zorgmesh_protocol::{Bsn, PatientKey};

fn scalar(label: &str) -> Scalar {
    use sha2::Digest;
    Scalar::from_bytes_mod_order_wide(&sha2::Sha512::digest(label.as_bytes()).into())
}

/// A deterministic t-of-n sharing whose whole key is `scalar("key")`.
fn sharing(threshold: u16, n: u16) -> (Scalar, EvaluatorSet, Vec<KeyShare>) {
    let coefficients: Vec<Scalar> = (0..threshold)
        .map(|j| {
            if j == 0 {
                scalar("key")
            } else {
                scalar(&format!("coefficient {j}"))
            }
        })
        .collect();
    let (commitments, shares) = deal_with_coefficients(&coefficients, n);
    let body = EvaluatorSetBody {
        version: 1,
        network: "zorgnet".into(),
        suite: SUITE_ID.into(),
        threshold,
        commitments,
        evaluators: (1..=n)
            .map(|index| EvaluatorEntry {
                index,
                name: format!("evaluator-{index}"),
            })
            .collect(),
        issued_at_ms: 0,
    };
    (
        coefficients[0],
        EvaluatorSet::from_body(&body).unwrap(),
        shares,
    )
}

fn bsns(n: u32) -> Vec<Bsn> {
    (10_000_000..)
        .filter_map(Bsn::from_first_eight)
        .take(n as usize)
        .collect()
}

fn keys_from(
    set: &EvaluatorSet,
    shares: &[&KeyShare],
    bsns: &[Bsn],
    rng: &mut ChaCha20Rng,
) -> Result<Vec<PatientKey>, OprfError> {
    let batch = BlindedBatch::blind(bsns.iter().map(patient_input).collect(), rng)?;
    let request = batch.request();
    let partials = shares
        .iter()
        .map(|share| batch.verify(set, &evaluate(share, &request, rng)?))
        .collect::<Result<Vec<_>, _>>()?;
    batch.combine(set, &partials)
}

fn subsets(n: usize, k: usize) -> Vec<Vec<usize>> {
    (0u32..(1 << n))
        .filter(|m| m.count_ones() as usize == k)
        .map(|m| (0..n).filter(|i| m & (1 << i) != 0).collect())
        .collect()
}

#[test]
fn every_choice_of_t_evaluators_gives_the_whole_keys_result() {
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let patients = bsns(20);
    for (t, n) in [(1u16, 1u16), (2, 3), (3, 5)] {
        let (key, set, shares) = sharing(t, n);
        let expected: Vec<PatientKey> = patients
            .iter()
            .map(|b| patient_key_with_whole_key(&key, b))
            .collect();
        for chosen in subsets(n as usize, t as usize) {
            let chosen: Vec<&KeyShare> = chosen.iter().map(|&i| &shares[i]).collect();
            assert_eq!(
                keys_from(&set, &chosen, &patients, &mut rng).unwrap(),
                expected
            );
        }
        // More than t partials: still the same keys.
        let all: Vec<&KeyShare> = shares.iter().collect();
        assert_eq!(
            keys_from(&set, &all, &patients, &mut rng).unwrap(),
            expected
        );
    }
}

#[test]
fn the_key_is_the_rfc9497_voprf_output_of_an_independent_implementation() {
    let (key, _, _) = sharing(2, 3);
    let server = VoprfServer::<Ristretto255>::new_with_key(&key.to_bytes()).unwrap();
    for bsn in bsns(5) {
        let output = server.evaluate(&patient_input(&bsn)).unwrap();
        assert_eq!(
            patient_key_with_whole_key(&key, &bsn).0[..],
            output[..32],
            "our key must be the first 32 bytes of the RFC 9497 output"
        );
    }
}

#[test]
fn our_proofs_verify_in_the_voprf_crate_and_its_proofs_verify_in_ours() {
    let mut rng = ChaCha20Rng::seed_from_u64(2);
    let (_, set, shares) = sharing(2, 3);
    let input = patient_input(&bsns(1)[0]);

    // Their client, our evaluator (share 2).
    let blind = VoprfClient::<Ristretto255>::blind(&input, &mut rng).unwrap();
    let request = EvaluationRequest {
        elements: vec![blind.message.serialize().into()],
    };
    let partial = evaluate(&shares[1], &request, &mut rng).unwrap();
    let element = EvaluationElement::<Ristretto255>::deserialize(&partial.elements[0]).unwrap();
    let proof_bytes = [partial.proof.c, partial.proof.s].concat();
    let proof = Proof::<Ristretto255>::deserialize(&proof_bytes).unwrap();
    let public_share = CompressedRistretto(set.public_share(2).unwrap())
        .decompress()
        .unwrap();
    blind
        .state
        .finalize(&input, &element, &proof, public_share)
        .expect("the voprf crate accepts our DLEQ proof");

    // Our client, their evaluator holding share 3.
    let batch = BlindedBatch::blind(vec![input.clone()], &mut rng).unwrap();
    let server = VoprfServer::<Ristretto255>::new_with_key(&shares[2].secret_bytes()).unwrap();
    let blinded =
        BlindedElement::<Ristretto255>::deserialize(&batch.request().elements[0]).unwrap();
    let answer = server.blind_evaluate(&mut rng, &blinded);
    let proof = answer.proof.serialize();
    let theirs = PartialEvaluation {
        evaluator: 3,
        elements: vec![answer.message.serialize().into()],
        proof: DleqProof {
            c: proof[..32].try_into().unwrap(),
            s: proof[32..].try_into().unwrap(),
        },
    };
    batch
        .verify(&set, &theirs)
        .expect("we accept the voprf crate's proof");
}

#[test]
fn t_minus_one_evaluators_cannot_make_a_key() {
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    let (key, set, shares) = sharing(3, 5);
    let patients = bsns(3);
    let too_few: Vec<&KeyShare> = shares[..2].iter().collect();
    assert_eq!(
        keys_from(&set, &too_few, &patients, &mut rng).unwrap_err(),
        OprfError::BelowThreshold {
            have: 2,
            threshold: 3
        }
    );
    // The same partial twice does not count twice.
    let repeated: Vec<&KeyShare> = vec![&shares[0], &shares[1], &shares[1]];
    assert!(matches!(
        keys_from(&set, &repeated, &patients, &mut rng),
        Err(OprfError::BelowThreshold { have: 2, .. })
    ));
    // Two colluders who forge a third share get wrong keys, and the forged partial's proof
    // fails against the third evaluator's public share.
    let forged = KeyShare::from_parts(3, &scalar("guess").to_bytes()).unwrap();
    let batch =
        BlindedBatch::blind(patients.iter().map(patient_input).collect(), &mut rng).unwrap();
    let answer = evaluate(&forged, &batch.request(), &mut rng).unwrap();
    assert_eq!(
        batch.verify(&set, &answer).unwrap_err(),
        OprfError::BadProof { evaluator: 3 }
    );
    let _ = key;
}

#[test]
fn a_bad_partial_evaluation_is_detected_by_its_proof() {
    let mut rng = ChaCha20Rng::seed_from_u64(4);
    let (_, set, shares) = sharing(2, 3);
    let batch = BlindedBatch::blind(bsns(4).iter().map(patient_input).collect(), &mut rng).unwrap();
    let good = evaluate(&shares[0], &batch.request(), &mut rng).unwrap();
    assert!(batch.verify(&set, &good).is_ok());

    // One element swapped for another valid group element.
    let mut swapped = good.clone();
    swapped.elements.swap(0, 1);
    assert_eq!(
        batch.verify(&set, &swapped).unwrap_err(),
        OprfError::BadProof { evaluator: 1 }
    );
    // An honest answer claimed under another evaluator's index.
    let mut relabelled = good.clone();
    relabelled.evaluator = 2;
    assert_eq!(
        batch.verify(&set, &relabelled).unwrap_err(),
        OprfError::BadProof { evaluator: 2 }
    );
    // A tampered proof, an unknown evaluator, a short answer.
    let mut tampered = good.clone();
    tampered.proof.s[0] ^= 1;
    assert!(batch.verify(&set, &tampered).is_err());
    let mut unknown = good.clone();
    unknown.evaluator = 9;
    assert_eq!(
        batch.verify(&set, &unknown).unwrap_err(),
        OprfError::UnknownEvaluator(9)
    );
    let mut short = good;
    short.elements.pop();
    assert!(matches!(
        batch.verify(&set, &short),
        Err(OprfError::Count(_))
    ));
}

#[test]
fn an_evaluator_sees_only_blinded_unlinkable_points() {
    let mut rng = ChaCha20Rng::seed_from_u64(5);
    let bsn = bsns(1).remove(0);
    let input = patient_input(&bsn);
    let first = BlindedBatch::blind(vec![input.clone()], &mut rng)
        .unwrap()
        .request();
    let second = BlindedBatch::blind(vec![input.clone()], &mut rng)
        .unwrap()
        .request();
    let encoded = zorgmesh_protocol::codec::encode(&first);
    // What the evaluator receives: 32 bytes per patient, no BSN, not the unblinded hash,
    // and two requests for the same patient share nothing.
    assert_eq!(encoded.len(), 8 + 32);
    assert!(!encoded.windows(9).any(|w| w == bsn.as_str().as_bytes()));
    assert_ne!(
        first.elements[0],
        hash_to_group(&input).compress().to_bytes()
    );
    assert_ne!(first.elements[0], second.elements[0]);
}
