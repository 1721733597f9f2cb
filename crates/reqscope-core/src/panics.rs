//! Where panics happened, for reports that name the line.

use std::any::Any;
use std::cell::RefCell;
use std::sync::Once;

thread_local! {
    static LAST_LOCATION: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Installs, once per process, a panic hook that remembers each panic's location (for
/// [`take_panic_location`]) and then runs the hook that was installed before it.
pub fn install_panic_location_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let location = info.location().map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()));
            LAST_LOCATION.with(|slot| *slot.borrow_mut() = location);
            previous(info);
        }));
    });
}

/// The location (`file:line:column`) of the last panic on this thread, if the hook saw it.
pub fn take_panic_location() -> Option<String> {
    LAST_LOCATION.with(|slot| slot.borrow_mut().take())
}

/// A panic payload's message: the `&str` or `String` given to `panic!`.
pub fn panic_message(payload: &(dyn Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic with a non-text payload".to_owned())
}
