// Probe Particle Model kernels for afm_ray.sim (physics, units and axes: afm_ray/sim/__init__.py).
//
// Units: Å, e, eV, eV/Å (forces), eV/Å² (stiffness). Forces are evaluated directly from the atoms
// (no force-field grid), so the probe can never read a periodic image or an edge of a grid.
//
// Buffers shared by the kernels (B samples, atoms of all samples concatenated):
//   atoms[i]      = (x, y, z, q)           Å, e
//   lj[i]         = (C12, C6)              eV·Å¹², eV·Å⁶ of atom i mixed with the probe:
//                                          E_LJ = C12/r¹² − C6/r⁶ = ε((R/r)¹² − 2(R/r)⁶)
//   atom_range[b] = (first atom, atom count) of sample b
//   pixel_origin[b] = (x, y) of pixel (0, 0)'s centre, z of the tip anchor at the first step, unused
// Pixel (ix, iy) sits at pixel_origin + (ix·pixel_step.x, iy·pixel_step.y); pix = ix·ny + iy.

#define COULOMB_K 14.399644f
#define R2_SAFE   1e-6f      // keeps 1/r² finite if a point lands on a nucleus
#define MAX_PROBE_CHARGES 3
// The number of probe point charges: fixed at build time (-D PROBE_CHARGES=n) when every configured tip
// has the same number, which lets the compiler unroll the Coulomb loop; else the kernels' argument.
#ifdef PROBE_CHARGES
#define PROBE_CHARGES_IN(argument) PROBE_CHARGES
#else
#define PROBE_CHARGES_IN(argument) (argument)
#endif
// The probe's point charges (kernel arguments probe_charge, probe_charge_z) as sample_force takes them.
#define PROBE_CHARGE_ARRAYS \
    const float charge[MAX_PROBE_CHARGES] = {probe_charge.x, probe_charge.y, probe_charge.z}; \
    const float charge_z[MAX_PROBE_CHARGES] = {probe_charge_z.x, probe_charge_z.y, probe_charge_z.z};

// The start of every per-pixel kernel (one work item = pixel pix of sample b; work items past the
// last pixel return): declares pix, b, nxy, the probe's charges, the sample's atom range and origin.
#define PIXEL_KERNEL_START \
    const int pix = get_global_id(0); \
    const int b = get_global_id(1); \
    const int nxy = nx * ny; \
    if (pix >= nxy) return; \
    PROBE_CHARGE_ARRAYS \
    const int2 range = atom_range[b]; \
    const float4 origin = pixel_origin[b];

// Pixel pix = ix·ny + iy of a sample whose pixel (0, 0) is at origin.xy: its (x, y) in Å.
inline float2 pixel_xy(float4 origin, float4 pixel_step, int pix, int ny)
{
    return (float2)(origin.x + (pix / ny) * pixel_step.x, origin.y + (pix % ny) * pixel_step.y);
}

// Sample force on the probe at p (LJ + Coulomb with the probe's point charges) and, where the
// pointers are not NULL, the energy and its Hessian (xx, yy, zz, xy, xz, yz). For a radial pair energy V(r) with
// d = p − atom: F = −(V'/r)·d and ∇∇V = (V'/r)·I + ((V'' − V'/r)/r²)·d dᵀ.
inline float3 sample_force(float3 p, __global const float4 *atoms, __global const float2 *lj,
                           int first, int count, int n_charges, const float *charge, const float *charge_z,
                           float *hessian, float *energy)
{
    float3 force = (float3)(0.0f);
    float e_sum = 0.0f;
    float g_sum = 0.0f;  // Σ V'/r: the isotropic part of the Hessian
    float hxx = 0.0f, hyy = 0.0f, hzz = 0.0f, hxy = 0.0f, hxz = 0.0f, hyz = 0.0f;
    for (int i = first; i < first + count; ++i) {
        const float4 atom = atoms[i];
        const float2 c = lj[i];
        const float3 d = p - atom.xyz;
        const float ir2 = 1.0f / (dot(d, d) + R2_SAFE);
        const float ir6 = ir2 * ir2 * ir2;
        const float g = (6.0f * c.y - 12.0f * c.x * ir6) * ir6 * ir2;
        force -= g * d;
        if (energy) e_sum += (c.x * ir6 - c.y) * ir6;
        if (hessian) {
            const float h = (168.0f * c.x * ir6 - 48.0f * c.y) * ir6 * ir2 * ir2;
            g_sum += g;
            hxx += h * d.x * d.x; hyy += h * d.y * d.y; hzz += h * d.z * d.z;
            hxy += h * d.x * d.y; hxz += h * d.x * d.z; hyz += h * d.y * d.z;
        }
        for (int k = 0; k < PROBE_CHARGES_IN(n_charges); ++k) {
            const float3 dq = (float3)(d.x, d.y, d.z + charge_z[k]);
            const float iq2 = 1.0f / (dot(dq, dq) + R2_SAFE);
            const float iq = sqrt(iq2);
            const float kqq = COULOMB_K * atom.w * charge[k];
            const float gq = -kqq * iq * iq2;
            force -= gq * dq;
            if (energy) e_sum += kqq * iq;
            if (hessian) {
                const float hq = 3.0f * kqq * iq * iq2 * iq2;
                g_sum += gq;
                hxx += hq * dq.x * dq.x; hyy += hq * dq.y * dq.y; hzz += hq * dq.z * dq.z;
                hxy += hq * dq.x * dq.y; hxz += hq * dq.x * dq.z; hyz += hq * dq.y * dq.z;
            }
        }
    }
    if (energy) *energy = e_sum;
    if (hessian) {
        hessian[0] = hxx + g_sum; hessian[1] = hyy + g_sum; hessian[2] = hzz + g_sum;
        hessian[3] = hxy; hessian[4] = hxz; hessian[5] = hyz;
    }
    return force;
}

// Smallest eigenvalue of the symmetric 3×3 matrix h = (xx, yy, zz, xy, xz, yz), closed form
// (trigonometric solution of the characteristic cubic).
inline float smallest_eigenvalue(const float *h)
{
    const float off = h[3] * h[3] + h[4] * h[4] + h[5] * h[5];
    const float mean = (h[0] + h[1] + h[2]) / 3.0f;
    const float a = h[0] - mean, b = h[1] - mean, c = h[2] - mean;
    const float spread2 = (a * a + b * b + c * c + 2.0f * off) / 6.0f;
    if (spread2 <= 1e-20f) return mean;
    const float spread = sqrt(spread2);
    const float det = a * (b * c - h[5] * h[5]) - h[3] * (h[3] * c - h[5] * h[4]) + h[4] * (h[3] * h[5] - b * h[4]);
    const float half_det = clamp(det / (2.0f * spread2 * spread), -1.0f, 1.0f);
    const float angle = acos(half_det) / 3.0f;
    return mean + 2.0f * spread * cos(angle + 2.0943951f);  // + 2π/3 picks the smallest root
}

// Solves (H + μI)·s = f for a symmetric 3×3 H by Cholesky. μ = 0 when H is positive definite;
// otherwise μ lifts the smallest eigenvalue to a small positive curvature, so s is a descent
// direction that moves fast along the soft mode (the trust radius then limits its length).
inline float3 newton_step(const float *h, float3 f)
{
    float shift = 0.0f;
    for (int attempt = 0; attempt < 2; ++attempt) {
        const float a = h[0] + shift, b = h[1] + shift, c = h[2] + shift;
        const float dxy = h[3], dxz = h[4], dyz = h[5];
        if (a > 1e-12f) {
            const float l11 = sqrt(a), l21 = dxy / l11, l31 = dxz / l11;
            const float l22s = b - l21 * l21;
            if (l22s > 1e-12f) {
                const float l22 = sqrt(l22s), l32 = (dyz - l21 * l31) / l22;
                const float l33s = c - l31 * l31 - l32 * l32;
                if (l33s > 1e-12f) {
                    const float l33 = sqrt(l33s);
                    const float y1 = f.x / l11, y2 = (f.y - l21 * y1) / l22, y3 = (f.z - l31 * y1 - l32 * y2) / l33;
                    const float x3 = y3 / l33, x2 = (y2 - l32 * x3) / l22, x1 = (y1 - l21 * x2 - l31 * x3) / l11;
                    return (float3)(x1, x2, x3);
                }
            }
        }
        const float scale = fabs(h[0]) + fabs(h[1]) + fabs(h[2]);
        shift = fmax(0.0f, -smallest_eigenvalue(h)) + 1e-3f + 1e-3f * scale;
    }
    return f;  // only if the shifted matrix still fails (round-off): a plain gradient step, trust-limited
}

// Relaxed approach curves. One work item = one pixel of one sample: the tip anchor descends
// n_steps times by pixel_step.z; at each height the probe (held by lateral springs kx, ky about
// the rest offset and a radial spring kr of rest length L) is relaxed by damped Newton iterations
// until |F_total| < sqrt(f2_tol), starting from the previous height's displacement (linearly
// extrapolated once the path is smooth). Steps are capped by a trust radius (max_step) and never
// accepted uphill in energy, so the probe settles in the minimum downhill of where it started.
// Writes the z component of the *sample* force at the relaxed position (what the tip feels through
// the springs) to fz[b][step][pix].
__kernel void relax_scan(
    __global const float4 *atoms, __global const float2 *lj, __global const int2 *atom_range,
    __global const float4 *pixel_origin,
    __global const float4 *probe_rest,       // (x, y, z) rest offset from the anchor, |rest| = L
    const float4 probe_charge, const float4 probe_charge_z, const int n_charges,
    const float4 stiffness,                  // (kx, ky, kr, L)
    const float4 pixel_step,                 // (dx, dy, dz) in Å
    const int nx, const int ny, const int n_steps,
    const int max_iterations, const float f2_tol, const float max_step,
    __global float *fz, __global int *unconverged,
    const int write_positions, __global float4 *positions)  // (x, y, z, iterations used) [b][step][pix]
{
    PIXEL_KERNEL_START
    const float3 rest = probe_rest[b].xyz;
    const float kx = stiffness.x, ky = stiffness.y, kr = stiffness.z, rest_length = stiffness.w;

    float3 tip = (float3)(pixel_xy(origin, pixel_step, pix, ny), origin.z);
    float3 disp = rest, disp_before = rest;
    int failures = 0;

    for (int step_index = 0; step_index < n_steps; ++step_index) {
        float3 guess = disp;
        const float3 trend = disp - disp_before;
        // Extrapolate only on smooth stretches: after a snap the last move says nothing about the next.
        if (step_index >= 2 && dot(trend, trend) < 0.0025f) guess += trend;
        float3 p = tip + guess;
        float3 fs = (float3)(0.0f);
        float3 last_step = (float3)(0.0f);
        float last_energy = INFINITY;
        float trust = max_step;
        int converged = 0;
        int iteration = 0;
        for (; iteration < max_iterations; ++iteration) {
            float h[6];
            float energy;
            fs = sample_force(p, atoms, lj, range.x, range.y, n_charges, charge, charge_z, h, &energy);
            const float3 d = p - tip;
            const float r = length(d);
            const float stretch = 1.0f - rest_length / r;   // radial spring: E = kr/2 (r − L)²
            const float3 f = fs - (float3)(kx * (d.x - rest.x), ky * (d.y - rest.y), 0.0f) - kr * stretch * d;
            if (dot(f, f) < f2_tol) { converged = 1; break; }
            const float3 off = d - rest;
            energy += 0.5f * (kx * off.x * off.x + ky * off.y * off.y + kr * (r - rest_length) * (r - rest_length));
            // A step that raised the energy overshot (or cycled around a saddle): take it back
            // halfway. The slack absorbs float32 round-off in the energy sum near convergence.
            if (energy > last_energy + 1e-6f * (1.0f + fabs(last_energy))) {
                last_step *= 0.5f;
                p -= last_step;
                trust = 0.5f * length(last_step);
                continue;
            }
            last_energy = energy;
            const float kl = kr * rest_length / (r * r * r);
            h[0] += kx + kr * stretch + kl * d.x * d.x;
            h[1] += ky + kr * stretch + kl * d.y * d.y;
            h[2] +=      kr * stretch + kl * d.z * d.z;
            h[3] += kl * d.x * d.y; h[4] += kl * d.x * d.z; h[5] += kl * d.y * d.z;
            float3 s = newton_step(h, f);
            const float s2 = dot(s, s);
            if (s2 > trust * trust) s *= trust / sqrt(s2);
            trust = fmin(max_step, 2.0f * trust);
            p += s;
            last_step = s;
        }
        if (!converged) {
            fs = sample_force(p, atoms, lj, range.x, range.y, n_charges, charge, charge_z, 0, 0);
            ++failures;
        }
        fz[((size_t)b * n_steps + step_index) * nxy + pix] = fs.z;
        if (write_positions) positions[((size_t)b * n_steps + step_index) * nxy + pix] = (float4)(p, (float)(iteration + 1));
        disp_before = disp;
        disp = p - tip;
        tip.z -= pixel_step.z;
    }
    if (failures) atomic_add(&unconverged[b], failures);
}

// Frequency shift by Giessibl's formula: df[b][pix][k] = Σ_j weights[j] · fz[b][k + j][pix], the
// weights (Hz per eV/Å, DF_WEIGHTS = df_steps + 1, fixed at build time) integrating a piecewise-linear
// Fz exactly. One work item per output value, item = pix·n_slices + k, so that consecutive work items
// write consecutive addresses.
__kernel void giessibl_df(
    __global const float *fz, __constant float *weights,
    const int n_steps, const int n_slices, const int nxy, __global float *df)
{
    const int item = get_global_id(0);
    const int b = get_global_id(1);
    if (item >= nxy * n_slices) return;
    const int pix = item / n_slices, k = item % n_slices;
    __global const float *column = fz + ((size_t)b * n_steps + k) * nxy + pix;
    float sum = 0.0f;
    for (int j = 0; j < DF_WEIGHTS; ++j) sum += weights[j] * column[(size_t)j * nxy];
    df[(size_t)b * nxy * n_slices + item] = sum;
}

// Rigid probe (no relaxation) on a pixel grid: fz_out = z force of the sample on the probe
// (LJ + Coulomb with its charges, eV/Å) and electrostatics_out = the potential Σ k_e q_i / r (V)
// (field_z = 0) or the field's z component E_z = Σ k_e q_i (z − z_i) / r³ (V/Å; field_z = 1) of
// the sample's point charges at (x_pix, y_pix, z), with z = z_values[b·zs_sample + k·zs_plane +
// pix·zs_pixel]. Outputs are laid out [b][pix][k].
__kernel void rigid_fields(
    __global const float4 *atoms, __global const float2 *lj, __global const int2 *atom_range,
    __global const float4 *pixel_origin,
    const float4 probe_charge, const float4 probe_charge_z, const int n_charges,
    const float4 pixel_step, const int nx, const int ny,
    __global const float *z_values, const int zs_sample, const int zs_plane, const int zs_pixel, const int n_planes,
    const int field_z, __global float *fz_out, __global float *electrostatics_out)
{
    PIXEL_KERNEL_START
    const float2 xy = pixel_xy(origin, pixel_step, pix, ny);
    for (int k = 0; k < n_planes; ++k) {
        const float3 p = (float3)(xy, z_values[(size_t)b * zs_sample + (size_t)k * zs_plane + (size_t)pix * zs_pixel]);
        const float3 f = sample_force(p, atoms, lj, range.x, range.y, n_charges, charge, charge_z, 0, 0);
        float electrostatics = 0.0f;
        for (int i = range.x; i < range.x + range.y; ++i) {
            const float4 atom = atoms[i];
            const float3 d = p - atom.xyz;
            const float inverse_r = rsqrt(dot(d, d) + R2_SAFE);
            electrostatics += field_z ? atom.w * d.z * inverse_r * inverse_r * inverse_r : atom.w * inverse_r;
        }
        const size_t out = ((size_t)b * nxy + pix) * n_planes + k;
        fz_out[out] = f.z;
        electrostatics_out[out] = COULOMB_K * electrostatics;
    }
}

// Electrostatic potential Σ k_e q_i / r (V; field_z = 0) or field E_z = Σ k_e q_i (z − z_i) / r³ (V/Å;
// field_z = 1) of the sample's point charges at p.
inline float sample_electrostatics(float3 p, __global const float4 *atoms, int first, int count, int field_z)
{
    float sum = 0.0f;
    for (int i = first; i < first + count; ++i) {
        const float4 atom = atoms[i];
        const float3 d = p - atom.xyz;
        const float inverse_r = rsqrt(dot(d, d) + R2_SAFE);
        sum += field_z ? atom.w * d.z * inverse_r * inverse_r * inverse_r : atom.w * inverse_r;
    }
    return COULOMB_K * sum;
}

inline float column_fz(float3 column, int k, float plane_dz, __global const float4 *atoms, __global const float2 *lj,
                       int2 range, int n_charges, const float *charge, const float *charge_z)
{
    const float3 p = column - (float3)(0.0f, 0.0f, k * plane_dz);
    return sample_force(p, atoms, lj, range.x, range.y, n_charges, charge, charge_z, 0, 0).z;
}

// First plane k ≤ last at which the probe, descending planes column − k·plane_dz, feels Fz > iso
// (-1 if none; NaN compares false: never a crossing). *fraction places the crossing between plane
// k − 1 and k (linear in Fz). Returns -2 if Fz exceeds iso at plane 0 already. The probe steps
// `stride` planes at a time and refines plane by plane once it has passed the iso level: with
// stride 1 every plane is visited; a larger stride misses only a crossing that comes and goes
// within one stride (a column grazing the rim of an atom's repulsive shell), so every stride whose
// end points come within (iso − refine_above) of the iso level is refined too.
inline int first_crossing(float3 column, float plane_dz, int last, int stride, float iso, float refine_above,
                          __global const float4 *atoms, __global const float2 *lj, int2 range,
                          int n_charges, const float *charge, const float *charge_z, float *fraction)
{
    float f_previous = 0.0f;
    int k_previous = -1;
    for (int k = 0; k_previous < last; k = min(k + stride, last)) {
        const float fz = column_fz(column, k, plane_dz, atoms, lj, range, n_charges, charge, charge_z);
        if (fz > iso || (k > 0 && fmax(fz, f_previous) > refine_above)) {
            if (k == 0) return -2;
            float f_above = f_previous;
            for (int j = k_previous + 1; j <= k; ++j) {
                const float f = j == k ? fz : column_fz(column, j, plane_dz, atoms, lj, range, n_charges, charge,
                                                        charge_z);
                if (f > iso) {
                    const float raw = (iso - f_above) / (f - f_above);
                    *fraction = isnan(raw) ? 1.0f : clamp(raw, 0.0f, 1.0f);  // NaN above: take this plane
                    return j;
                }
                f_above = f;
            }
        }
        f_previous = fz;
        k_previous = k;
    }
    return -1;
}

// A bound for the iso search: the surface crossing in the pixel column nearest above each atom.
// Every pixel's crossing lies at or below the highest surface point, whose Height-Map value is
// cut_depth; so a column whose first crossing lies more than cut_depth below the highest of these
// crossings reads 0 and need not be searched that deep. crossing_bound[b] = the smallest crossing
// plane index over the sample's atom columns (initialised to n_planes by the host).
__kernel void iso_search_bound(
    __global const float4 *atoms, __global const float2 *lj, __global const int2 *atom_range,
    __global const float4 *pixel_origin, __global const float *top_z,
    const float4 probe_charge, const float4 probe_charge_z, const int n_charges,
    const float4 pixel_step, const int nx, const int ny,
    const float highest, const float plane_dz, const int n_planes, const float iso,
    __global int *crossing_bound)
{
    const int j = get_global_id(0);
    const int b = get_global_id(1);
    const int2 range = atom_range[b];
    if (j >= range.y) return;
    PROBE_CHARGE_ARRAYS
    const float4 origin = pixel_origin[b];
    const float4 atom = atoms[range.x + j];
    const int ix = clamp((int)round((atom.x - origin.x) / pixel_step.x), 0, nx - 1);
    const int iy = clamp((int)round((atom.y - origin.y) / pixel_step.y), 0, ny - 1);
    const float3 column = (float3)(origin.x + ix * pixel_step.x, origin.y + iy * pixel_step.y, top_z[b] + highest);
    float fraction;
    const int k = first_crossing(column, plane_dz, n_planes - 1, 1, iso, iso, atoms, lj, range, n_charges, charge,
                                 charge_z, &fraction);
    if (k > 0) atomic_min(&crossing_bound[b], k);
}

// Height Map iso surface of a rigid probe, searched on the device so that two maps leave it instead of
// n_planes fields. Per pixel, the probe descends planes z_k = top_z[b] + highest − k·plane_dz until
// the z force of the sample on it (LJ + Coulomb with its charges, eV/Å) first exceeds iso, at most
// to plane crossing_bound[b] + cut_planes + 1 (iso_search_bound); the crossing is interpolated
// linearly between that plane and the one above, and so are the electrostatics
// (sample_electrostatics) evaluated on those two planes. Writes, [b][pix]: surface = z of the
// crossing above the top nucleus (Å; NaN where none down to the bound) and electrostatics there (0
// where none); status[b] = 1 if Fz exceeds iso at the highest plane.
__kernel void iso_surface(
    __global const float4 *atoms, __global const float2 *lj, __global const int2 *atom_range,
    __global const float4 *pixel_origin, __global const float *top_z,
    const float4 probe_charge, const float4 probe_charge_z, const int n_charges,
    const float4 pixel_step, const int nx, const int ny,
    const float highest, const float plane_dz, const int n_planes, const float iso, const int field_z,
    __global const int *crossing_bound, const int cut_planes, const int stride, const float refine_above,
    __global float *surface, __global float *electrostatics, __global int *status)
{
    PIXEL_KERNEL_START
    const float3 column = (float3)(pixel_xy(origin, pixel_step, pix, ny), top_z[b] + highest);
    const int last = min(n_planes - 1, crossing_bound[b] + cut_planes + 1);
    float fraction = 1.0f;
    const int k = first_crossing(column, plane_dz, last, stride, iso, refine_above, atoms, lj, range, n_charges,
                                 charge, charge_z, &fraction);
    float result_z = NAN, result_value = 0.0f;
    if (k == -2) {
        status[b] = 1;
    } else if (k > 0) {
        const float3 lower = column - (float3)(0.0f, 0.0f, k * plane_dz);
        const float v_upper = sample_electrostatics(lower + (float3)(0.0f, 0.0f, plane_dz), atoms, range.x, range.y,
                                                    field_z);
        const float v_lower = sample_electrostatics(lower, atoms, range.x, range.y, field_z);
        result_z = highest - (k - 1 + fraction) * plane_dz;
        result_value = v_upper + fraction * (v_lower - v_upper);
    }
    surface[(size_t)b * nxy + pix] = result_z;
    electrostatics[(size_t)b * nxy + pix] = result_value;
}
