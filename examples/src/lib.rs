//! Example kernels (`examples/kf/*.kf`) and the small programs the README uses: one makes input
//! arrays, one prints an output array.
