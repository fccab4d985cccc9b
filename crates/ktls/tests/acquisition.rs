//! A credential acquired in the background (SspiAcquireCredentialsHandleAsyncW from a work item):
//! its observer hears the outcome while the census still counts the acquisition, so a driver's
//! unload (which waits only for the census) cannot free what the observer reaches into first.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kemu::FaultPlan;
use ksys::sspi::{SEC_E_NO_CREDENTIALS, SECURITY_STATUS};
use ktls::census::Census;
use ktls::credential::{Acquisition, CredentialSpec, Versions};
use ktls::session::Observer;
use testkit::{Pki, test_driver};

/// Records how many census members were live at each notification.
#[derive(Clone)]
struct Watch {
    census: Census,
    live_when_told: Arc<Mutex<Vec<usize>>>,
}

impl Observer for Watch {
    fn changed(&self) {
        self.live_when_told.lock().unwrap().push(self.census.live());
    }
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn the_observer_hears_the_outcome_before_the_census_lets_unload_go() {
    let kernel = testkit::boot_with_faults(FaultPlan::default());
    let pki = Pki::install(
        &kernel,
        "ktls acquisition CA",
        &["localhost"],
        "ktls-acquisition",
    );
    test_driver::load(&kernel, "ktlsacquire").unwrap();
    let known = pki.thumbprint.0;
    let outcomes = kernel
        .run("acquire", move || {
            let census = Census::try_new().unwrap();
            let watch = Watch {
                census: census.clone(),
                live_when_told: Arc::default(),
            };
            let mut outcomes: Vec<Result<(), SECURITY_STATUS>> = Vec::new();
            // A certificate in the store, then one that is not (the failure `serve` meets with
            // a wrong thumbprint), many times: the race is between the notification and unload.
            for round in 0..200 {
                let thumbprint = if round % 2 == 0 { known } else { [0x5A; 20] };
                let spec = CredentialSpec {
                    inbound: true,
                    thumbprint: Some(thumbprint),
                    flags: 0,
                    versions: Versions {
                        tls12: true,
                        tls13: true,
                    },
                    require_client_certificate: false,
                };
                // SAFETY: the test driver's device, loaded above and unloaded only at shutdown
                // (after the census is empty); the census is the one waited on below.
                let acquisition = unsafe {
                    Acquisition::start(test_driver::device(), &spec, Some(&census), watch.clone())
                }
                .unwrap();
                let mut outcome = None;
                wait_until("the acquisition's outcome", || {
                    outcome = acquisition.take();
                    outcome.is_some()
                });
                outcomes.push(outcome.unwrap().map(drop));
                drop(acquisition);
                wait_until("the acquisition to leave the census", || census.live() == 0);
            }
            let told = watch.live_when_told.lock().unwrap().clone();
            (outcomes, told)
        })
        .unwrap();
    let (outcomes, told) = outcomes;
    assert_eq!(outcomes.len(), 200);
    for (round, outcome) in outcomes.iter().enumerate() {
        if round % 2 == 0 {
            assert_eq!(*outcome, Ok(()), "round {round}");
        } else {
            assert_eq!(*outcome, Err(SEC_E_NO_CREDENTIALS), "round {round}");
        }
    }
    assert_eq!(told.len(), 200, "one notification per acquisition");
    assert!(
        told.iter().all(|&live| live >= 1),
        "told with the census already empty: {told:?}"
    );
    kernel.shutdown().unwrap();
}
