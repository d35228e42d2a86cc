// Elementary functions that give the same bits on every machine. glibc
// picks an FMA or an SSE2 version of exp, log, pow, sin and cos per CPU
// (ifunc), and they differ in the last bit of about 7 results in 10,000
// (docs/RELIABILITY.md, "Same codes on every machine"); results computed
// here use only IEEE additions, multiplications and divisions, in a fixed
// order (this file is compiled without fused multiply-adds), so they are
// the same everywhere. Accuracy: within a few units in the last place.
#pragma once

namespace commvq {
namespace portable {

// e^x.
double exp(double x);
// The natural logarithm of x > 0 (NaN for x <= 0 or NaN, +Inf for +Inf).
double log(double x);
// x^y for finite x > 0 and finite y (NaN otherwise).
double pow(double x, double y);
// sin x and cos x. Exact reduction by pi/2 for |x| < 2^27 pi/2 (positions
// times frequencies of any real context); beyond that still the same bits
// everywhere, but less accurate.
void sincos(double x, double* sin_x, double* cos_x);

}  // namespace portable
}  // namespace commvq
