// portable_math.h: accurate to a few units in the last place against long
// double references, and the same bits on every machine: a digest of many
// results is a constant of the test (IEEE arithmetic in a fixed order has
// one answer). CTest also runs this with glibc's SSE2 versions of its own
// functions forced (tests/CMakeLists.txt): nothing here may depend on them.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <cstring>

#include "portable_math.h"
#include "random_codebook.h"

using namespace commvq;

namespace {

// Distance in units in the last place of the double nearest ref.
double ulps(double x, long double ref) {
    const double r = double(ref);
    if (x == r) return 0;
    const double ulp = std::nextafter(std::fabs(r), INFINITY) - std::fabs(r);
    return double(std::fabs((long double)x - ref) / ulp);
}

struct Digest {
    uint64_t h = 1469598103934665603ull;
    void add(double v) {
        uint64_t b;
        std::memcpy(&b, &v, 8);
        for (int i = 0; i < 8; ++i) h = (h ^ ((b >> (8 * i)) & 255)) * 1099511628211ull;
    }
};

}  // namespace

TEST_CASE("portable math: exp, log and pow within a few ulps") {
    test::Rng rng(5);
    double worst_exp = 0, worst_log = 0, worst_pow = 0;
    for (int i = 0; i < 200000; ++i) {
        const double x = rng.uniform(-744, 709);
        worst_exp = std::max(worst_exp, ulps(portable::exp(x), std::exp((long double)x)));
        const double y = std::exp(rng.uniform(-700, 700));
        worst_log = std::max(worst_log, ulps(portable::log(y), std::log((long double)y)));
        const double theta = rng.uniform(100, 1e7), e = -rng.uniform(0, 1);
        worst_pow = std::max(worst_pow, ulps(portable::pow(theta, e), std::pow((long double)theta, (long double)e)));
    }
    MESSAGE("worst ulps: exp " << worst_exp << ", log " << worst_log << ", pow " << worst_pow);
    CHECK(worst_exp <= 1.5);
    CHECK(worst_log <= 1);
    CHECK(worst_pow <= 2);
    CHECK(portable::exp(0) == 1);
    CHECK(portable::log(1) == 0);
    CHECK(portable::exp(-1000) == 0);
    CHECK(portable::exp(1000) == INFINITY);
    CHECK(std::isnan(portable::log(-1)));
    CHECK(portable::log(0) == -INFINITY);
}

TEST_CASE("portable math: sin and cos within a few ulps of 1, to angles of 2^27 pi/2") {
    test::Rng rng(6);
    double worst = 0;
    for (int i = 0; i < 200000; ++i) {
        const double x = (i % 2 ? 1 : -1) * std::ldexp(rng.uniform(1, 2), int(rng.uniform(-30, 27.6)));
        double s = 0, c = 0;
        portable::sincos(x, &s, &c);
        const long double ls = std::sin((long double)x), lc = std::cos((long double)x);
        worst = std::max(worst, double(std::max(std::fabs(s - ls), std::fabs(c - lc))));
    }
    MESSAGE("worst absolute error of sin, cos: " << worst << " (2^-52 = " << std::ldexp(1.0, -52) << ")");
    CHECK(worst <= std::ldexp(1.0, -52));
    double s = 1, c = 0;
    portable::sincos(0, &s, &c);
    CHECK(s == 0);
    CHECK(c == 1);
    portable::sincos(NAN, &s, &c);
    CHECK(std::isnan(s));
    CHECK(std::isnan(c));
    portable::sincos(1e300, &s, &c);  // the same bits everywhere, if not the true sine
    CHECK(std::fabs(s) <= 1.0000001);
    CHECK(std::fabs(c) <= 1.0000001);
}

TEST_CASE("portable math: the same bits on every machine") {
    test::Rng rng(7);
    Digest d;
    for (int i = 0; i < 20000; ++i) {
        const double x = rng.uniform(-50, 50);
        d.add(portable::exp(x));
        d.add(portable::log(std::fabs(x) + 1e-3));
        d.add(portable::pow(rng.uniform(1e3, 1e6), -rng.uniform(0, 1)));
        double s = 0, c = 0;
        portable::sincos(rng.uniform(-1e7, 1e7), &s, &c);
        d.add(s);
        d.add(c);
    }
    CHECK(d.h == 0x24457573a0010353ull);
}
