#include "portable_math.h"

#include <cmath>
#include <cstdint>

namespace commvq {
namespace portable {

namespace {

// ln 2 = kLn2Hi + kLn2Lo, kLn2Hi with 40 significant bits: k * kLn2Hi is
// exact for |k| < 2^13.
constexpr double kLn2Hi = 0x1.62e42fefa2000p-1;
constexpr double kLn2Lo = 0x1.9ef35793c7673p-41;
constexpr double kLog2E = 0x1.71547652b82fep+0;
constexpr double kSqrtHalf = 0x1.6a09e667f3bcdp-1;
// pi/2 = kPio2[0] + ... + kPio2[3] (to 2^-130), the first three with 26
// significant bits: k * kPio2[i] is exact for |k| < 2^27.
constexpr double kPio2[4] = {0x1.921fb50000000p+0, 0x1.110b460000000p-26, 0x1.1a62630000000p-54,
                             0x1.8a2e03707344ap-81};
constexpr double kTwoOverPi = 0x1.45f306dc9c883p-1;

// x rounded to the nearest integer (ties to even), for |x| < 2^51: adding
// and subtracting 1.5 * 2^52 leaves no fraction bits.
double round_int(double x) {
    constexpr double kShift = 0x1.8p52;
    return (x + kShift) - kShift;
}

// a + b = s + e exactly (any a, b).
void two_sum(double a, double b, double& s, double& e) {
    s = a + b;
    const double bv = s - a;
    e = (a - (s - bv)) + (b - bv);
}

// a * b = p + e exactly (Dekker's product: no fused multiply-add needed).
void two_prod(double a, double b, double& p, double& e) {
    constexpr double kSplit = 134217729.0;  // 2^27 + 1
    const double ca = kSplit * a, cb = kSplit * b;
    const double ah = ca - (ca - a), al = a - ah, bh = cb - (cb - b), bl = b - bh;
    p = a * b;
    e = ((ah * bh - p) + ah * bl + al * bh) + al * bl;
}

// log x as hi + lo, to about 2^-65 relative, for finite x > 0.
void log_dd(double x, double& hi, double& lo) {
    // x = 2^e m, sqrt(1/2) <= m < sqrt(2); log m = 2 atanh f, f = (m-1)/(m+1),
    // |f| < 0.172: 2f to double-double precision plus 2f (f^2/3 + f^4/5 +
    // ... + f^22/23), which is below 1% of it.
    int e = 0;
    double m = std::frexp(x, &e);  // exact
    if (m < kSqrtHalf) {
        m *= 2;
        --e;
    }
    const double u = m - 1.0;  // exact
    double v = 0, v_err = 0;
    two_sum(m, 1.0, v, v_err);
    const double f = u / v;
    double p = 0, p_err = 0;
    two_prod(f, v, p, p_err);
    const double f_lo = (((u - p) - p_err) - f * v_err) / v;  // f + f_lo = u / (v + v_err)
    const double s = f * f;
    constexpr double c[] = {0x1.642c8590b2164p-5, 0x1.8618618618618p-5, 0x1.af286bca1af28p-5,
                            0x1.e1e1e1e1e1e1ep-5, 0x1.1111111111111p-4, 0x1.3b13b13b13b14p-4,
                            0x1.745d1745d1746p-4, 0x1.c71c71c71c71cp-4, 0x1.2492492492492p-3,
                            0x1.999999999999ap-3, 0x1.5555555555555p-2};  // 1/23 .. 1/3
    double q = c[0];
    for (int i = 1; i < 11; ++i) q = q * s + c[i];
    double sum = 0, sum_err = 0;
    two_sum(double(e) * kLn2Hi, 2.0 * f, sum, sum_err);  // e * kLn2Hi and 2f are exact
    const double rest = sum_err + (double(e) * kLn2Lo + (2.0 * f_lo + 2.0 * f * (s * q)));
    hi = sum + rest;
    lo = rest - (hi - sum);
}

}  // namespace

double exp(double x) {
    if (x != x) return x;
    if (x > 709.782712893384) return INFINITY;
    if (x < -745.1332191019412) return 0.0;
    // x = k ln 2 + r, |r| <= ln 2 / 2, then e^r by its Taylor series to r^13
    // (remainder below 2^-60 of the sum).
    const double k = round_int(x * kLog2E);
    const double r = (x - k * kLn2Hi) - k * kLn2Lo;
    constexpr double c[] = {0x1.6124613a86d09p-33, 0x1.1eed8eff8d898p-29, 0x1.ae64567f544e4p-26,
                            0x1.27e4fb7789f5cp-22, 0x1.71de3a556c734p-19, 0x1.a01a01a01a01ap-16,
                            0x1.a01a01a01a01ap-13, 0x1.6c16c16c16c17p-10, 0x1.1111111111111p-7,
                            0x1.5555555555555p-5, 0x1.5555555555555p-3, 0x1.0000000000000p-1};  // 1/13! .. 1/2!
    double p = c[0];
    for (int i = 1; i < 12; ++i) p = p * r + c[i];
    p = 1.0 + (r + r * (r * p));
    return std::ldexp(p, int(k));  // exact (or one rounding into the subnormals)
}

double log(double x) {
    if (!(x > 0)) return x == 0 ? -INFINITY : NAN;
    if (x == INFINITY) return x;
    double hi = 0, lo = 0;
    log_dd(x, hi, lo);
    return hi + lo;
}

// y log x in double-double, then e^hi (1 + lo): the rounding of y log x,
// which exp would magnify |y log x| times, is kept.
double pow(double x, double y) {
    if (!(x > 0) || x == INFINITY || !std::isfinite(y)) return NAN;
    double hi = 0, lo = 0;
    log_dd(x, hi, lo);
    double p = 0, p_err = 0;
    two_prod(y, hi, p, p_err);
    const double e = exp(p);
    return e + e * (p_err + y * lo);
}

void sincos(double x, double* sin_x, double* cos_x) {
    if (!std::isfinite(x)) {
        *sin_x = *cos_x = NAN;
        return;
    }
    // x = k pi/2 + r, |r| <= pi/4 (a little more past 2^27 pi/2), then the
    // Taylor series of sin r to r^17 and cos r to r^18 (remainders below
    // 2^-62), and the quadrant k mod 4.
    if (!(std::fabs(x) < 0x1p50)) x = std::fmod(x, 0x1.921fb54442d18p+2);  // 2 pi; fmod is exact
    const double k = round_int(x * kTwoOverPi);
    double r = x;
    for (double part : kPio2) r -= k * part;
    const double s = r * r;
    constexpr double sc[] = {0x1.952c77030ad4ap-49, -0x1.ae7f3e733b81fp-41, 0x1.6124613a86d09p-33,
                             -0x1.ae64567f544e4p-26, 0x1.71de3a556c734p-19, -0x1.a01a01a01a01ap-13,
                             0x1.1111111111111p-7, -0x1.5555555555555p-3};  // 1/17! .. -1/3!
    constexpr double cc[] = {-0x1.6827863b97d97p-53, 0x1.ae7f3e733b81fp-45, -0x1.93974a8c07c9dp-37,
                             0x1.1eed8eff8d898p-29, -0x1.27e4fb7789f5cp-22, 0x1.a01a01a01a01ap-16,
                             -0x1.6c16c16c16c17p-10, 0x1.5555555555555p-5, -0x1.0000000000000p-1};  // -1/18! .. -1/2!
    double ps = sc[0];
    for (int i = 1; i < 8; ++i) ps = ps * s + sc[i];
    double pc = cc[0];
    for (int i = 1; i < 9; ++i) pc = pc * s + cc[i];
    const double sin_r = r + r * (s * ps), cos_r = 1.0 + s * pc;
    const int64_t quadrant = int64_t(std::fmod(k, 4.0)) & 3;  // fmod: exact; & 3 maps -1..-3 too
    switch (quadrant) {
        case 0: *sin_x = sin_r, *cos_x = cos_r; break;
        case 1: *sin_x = cos_r, *cos_x = -sin_r; break;
        case 2: *sin_x = -sin_r, *cos_x = -cos_r; break;
        default: *sin_x = -cos_r, *cos_x = sin_r; break;
    }
}

}  // namespace portable
}  // namespace commvq
