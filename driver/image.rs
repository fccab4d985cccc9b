//! What only the kernel image needs: its panic handler and its pool-backed heap.

/// Every heap allocation of the image is non-paged pool tagged "WkTl".
#[global_allocator]
static POOL: ksys::pool::PoolAllocator = ksys::pool::PoolAllocator::new(*b"WkTl");

/// A panic in the kernel stops the machine with a bugcheck naming file, line and column.
#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    ksys::kmdf::bugcheck_on_panic(info)
}
